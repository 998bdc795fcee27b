"""Liveness (restart me?) and readiness (send me traffic?) for orchestrators, plus the Prometheus scrape."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.responses import Response

from app.api.schemas import HealthStatus
from app.engine.engine import Engine

router = APIRouter(tags=["operations"])


def _json(status_code: int, body: HealthStatus) -> Response:
    return Response(body.model_dump_json(exclude_none=True), status_code=status_code, media_type="application/json")


@router.get("/health/live", response_model=HealthStatus, responses={503: {"model": HealthStatus}})
async def live(request: Request) -> Response:
    """200 while the process can serve; 503 once loading failed or a device worker died (restart the pod)."""
    engine: Engine = request.app.state.engine
    if engine.live:
        return _json(200, HealthStatus(status="live"))
    return _json(503, HealthStatus(status="failed"))


@router.get("/health/ready", response_model=HealthStatus, responses={503: {"model": HealthStatus}})
async def ready(request: Request) -> Response:
    """200 only when every enabled variant is loaded and warmed up at its largest batch shape."""
    engine: Engine = request.app.state.engine
    statuses = {name: str(runtime.status) for name, runtime in engine.variants.items() if runtime.spec.enabled}
    if engine.draining:
        return _json(503, HealthStatus(status="draining", variants=statuses))
    if engine.ready:
        return _json(200, HealthStatus(status="ready", variants=statuses))
    return _json(503, HealthStatus(status="not_ready", variants=statuses))


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
