"""Liveness (restart me?) and readiness (send me traffic?) for orchestrators, plus the Prometheus scrape. The
decisions are ``app.service.health``'s, shared with the Open Inference Protocol's /v2/health routes."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from starlette.responses import Response

from app.api.schemas import HealthStatus
from app.service import health

router = APIRouter(tags=["operations"])


def _json(status_code: int, body: HealthStatus) -> Response:
    return Response(body.model_dump_json(exclude_none=True), status_code=status_code, media_type="application/json")


@router.get("/health/live", response_model=HealthStatus, responses={503: {"model": HealthStatus}})
async def live(request: Request) -> Response:
    """200 while the process can serve; 503 once loading failed or a device worker died (restart the pod)."""
    if health.liveness(request.app.state.engine):
        return _json(200, HealthStatus(status="live"))
    return _json(503, HealthStatus(status="failed"))


@router.get("/health/ready", response_model=HealthStatus, responses={503: {"model": HealthStatus}})
async def ready(request: Request) -> Response:
    """200 only when every enabled variant is loaded and warmed up at its largest batch shape."""
    readiness = health.readiness(request.app.state.engine)
    return _json(200 if readiness.ready else 503, HealthStatus(status=readiness.state, variants=readiness.variants))


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request) -> Response:
    # In a thread: a front end's collection asks the engine process and waits for its answer (app.multiprocess).
    # The format the scraper asks for (issue #27): OpenMetrics carries the histograms' exemplars (trace ids), the
    # classic text format does not.
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(await asyncio.to_thread(encode, REGISTRY), headers={"content-type": content_type})
