"""The HTTP side of a prediction, shared by native /predict and Open Inference Protocol infer: hand the parsed query
to the protocol-neutral prediction service (``app.service.prediction``), cancel it if the client hangs up, translate
its errors, and answer with the protocol's rendered body and the timing headers. Parsing and rendering are each
protocol's own."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request
from starlette.responses import Response

from app.api import accounting
from app.api.accounting import CLIENT_CLOSED, outcome_for
from app.api.errors import from_engine
from app.engine.contract import EngineResult
from app.engine.errors import EngineError
from app.service.prediction import (
    ClientDisconnected,
    InvalidQueryError,
    PredictionQuery,
    PredictionService,
    TooManyPairsError,
)

__all__ = ["ROUTING_KEY_HEADER", "RenderedBody", "answer_prediction", "outcome_for"]

ROUTING_KEY_HEADER = "X-Routing-Key"


@dataclass(frozen=True, slots=True)
class RenderedBody:
    """A response body that is not plain JSON (the binary tensor extension's): bytes, media type, extra headers."""

    content: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


async def _until_disconnected(request: Request) -> None:
    """Returns once the client has closed the connection (its body has been read, so only that is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def answer_prediction(
    request: Request,
    query: PredictionQuery,
    render: Callable[[EngineResult], bytes | RenderedBody],
    endpoint: str,
) -> Response:
    """Predict ``query`` through the service and answer with ``render``'s body and the timing headers.

    Raises ApiError for every failure, so each router's error handling shapes the body its protocol expects.
    """
    started = time.perf_counter()
    service: PredictionService = request.app.state.service
    accounting.counted_by_service(request.scope)
    try:
        result = await service.predict(query, endpoint, lambda: _until_disconnected(request))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED)
    except (EngineError, InvalidQueryError, TooManyPairsError) as error:
        raise from_engine(error) from None
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


def routing_key(request: Request) -> str | None:
    return request.headers.get(ROUTING_KEY_HEADER)
