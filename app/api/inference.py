"""What every prediction endpoint shares (native /predict and Open Inference Protocol infer): limits, the engine
call, client-disconnect handling, error translation, request metrics and timing headers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request
from starlette.responses import Response

from app import metrics
from app.api.errors import ApiError, from_engine
from app.api.middleware import CLIENT_CLOSED
from app.engine.engine import Engine, PredictionResult
from app.engine.errors import EngineError
from app.engine.scheduler import Priority
from app.settings import Settings

ROUTING_KEY_HEADER = "X-Routing-Key"


@dataclass(frozen=True, slots=True)
class RenderedBody:
    """A response body that is not plain JSON (the binary tensor extension's): bytes, media type, extra headers."""

    content: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


def outcome_for(status: int) -> str:
    """The `outcome` label of xnli_requests_total for an HTTP status."""
    if status < 400:
        return "success"
    if status == 404:
        return "not_found"
    if status == 429:
        return "overloaded"
    if status == 503:
        return "unavailable"
    if status == CLIENT_CLOSED:
        return "disconnected"
    if status < 500:
        return "client_error"
    return "error"


def too_many_pairs(count: int, limit: int) -> ApiError:
    return ApiError(413, "too_many_pairs", f"{count} pairs in one request; the limit is max_pairs_per_request={limit}")


async def _cancel_on_disconnect(request: Request, handler: asyncio.Task[object], hung_up: list[bool]) -> None:
    """Cancel ``handler`` when the client closes the connection (the body has been read, so only that is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    hung_up.append(True)
    handler.cancel()


async def _predict_unless_disconnected(
    request: Request,
    engine: Engine,
    pairs: list[tuple[str, str]],
    variant: str,
    truncate: bool,
    timeout_s: float | None,
    priority: Priority,
    language: str | None,
) -> PredictionResult | None:
    """Run the prediction, but drop it (its queued pairs are then skipped) if the client hangs up first.

    The prediction runs in the handler's own task and only the watcher is a new one: one task per request, not two
    plus an asyncio.wait, which matters when HTTP, not the model, is the bottleneck.
    """
    handler = asyncio.current_task()
    assert handler is not None
    hung_up: list[bool] = []
    watcher = asyncio.get_running_loop().create_task(_cancel_on_disconnect(request, handler, hung_up))
    try:
        return await engine.predict(pairs, variant, truncate, timeout_s, priority=priority, language=language)
    except asyncio.CancelledError:
        if not hung_up:
            raise  # the server is cancelling us, not the client
        handler.uncancel()
        return None
    finally:
        watcher.cancel()


async def run_prediction(
    request: Request,
    variant: str | None,
    extract_pairs: Callable[[], list[tuple[str, str]]],
    render: Callable[[PredictionResult], bytes | RenderedBody],
    endpoint: str,
    truncate: bool = True,
    timeout_s: float | None = None,
    *,
    priority: str = "interactive",
    language: str | None = None,
) -> Response:
    """Route to a variant (``variant`` if named, else the catalogue's split, sticky for an ``X-Routing-Key``), check
    limits, predict, and answer with ``render``'s body and the timing headers.

    Raises ApiError for every failure, so each endpoint's error handler shapes the body its protocol expects.
    """
    started = time.perf_counter()
    engine: Engine = request.app.state.engine
    settings: Settings = request.app.state.settings
    variant_label = metrics.UNKNOWN_VARIANT
    status = 500
    try:
        variant_label = engine.route(variant, request.headers.get(ROUTING_KEY_HEADER)).spec.name
        pairs = extract_pairs()
        if len(pairs) > settings.max_pairs_per_request:
            raise too_many_pairs(len(pairs), settings.max_pairs_per_request)
        result = await _predict_unless_disconnected(
            request, engine, pairs, variant_label, truncate, timeout_s, Priority[priority.upper()], language
        )
        if result is None:
            status = CLIENT_CLOSED
            return Response(status_code=CLIENT_CLOSED)
        status = 200
    except ApiError as error:
        status = error.status
        raise
    except EngineError as error:
        api_error = from_engine(error)
        status = api_error.status
        raise api_error from None
    finally:
        metrics.REQUEST_DURATION.labels(variant_label, endpoint).observe(time.perf_counter() - started)
        metrics.REQUESTS.labels(variant_label, outcome_for(status)).inc()
    timings = result.timings
    rendered = render(result)
    body = rendered if isinstance(rendered, RenderedBody) else RenderedBody(rendered, "application/json")
    return Response(
        body.content,
        media_type=body.media_type,
        headers={
            "X-Variant": result.variant,
            "X-Tokenization-Time": f"{timings.tokenization_s * 1000:.3f}",
            "X-Queue-Time": f"{timings.queue_s * 1000:.3f}",
            "X-Inference-Time": f"{timings.inference_s * 1000:.3f}",
            "X-Total-Time": f"{(time.perf_counter() - started) * 1000:.3f}",
            **body.headers,
        },
    )
