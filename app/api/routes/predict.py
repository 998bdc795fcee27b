"""POST /predict and POST /variants/{name}/predict: parse, validate, call the engine, shape the answer."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from app import metrics
from app.api.errors import ApiError, from_engine
from app.api.schemas import (
    ErrorResponse,
    PairBody,
    PairsBody,
    PredictRequest,
    PredictResponse,
    VariantPredictRequest,
)
from app.engine.engine import Engine, PredictionResult
from app.engine.errors import EngineError
from app.engine.labels import LABELS
from app.settings import Settings

router = APIRouter(tags=["inference"])

CLIENT_CLOSED = 499  # nginx's code for "the client went away first"; logged, never seen by a client


async def _client_disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read, so only http.disconnect is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _predict_unless_disconnected(
    request: Request, engine: Engine, pairs: list[tuple[str, str]], variant: str, body: PairBody | PairsBody
) -> PredictionResult | None:
    """Run the prediction, but drop it (its queued pairs are then skipped) if the client hangs up first."""
    timeout_s = body.timeout_ms / 1000.0 if body.timeout_ms is not None else None
    prediction = asyncio.ensure_future(engine.predict(pairs, variant, body.truncate, timeout_s))
    watcher = asyncio.ensure_future(_client_disconnected(request))
    try:
        await asyncio.wait((prediction, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not prediction.done():
        prediction.cancel()
        with contextlib.suppress(asyncio.CancelledError, EngineError):
            await prediction
        return None
    return prediction.result()


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (404, "Unknown variant."),
        (400, "Body is not valid UTF-8."),
        (401, "Missing or wrong API key (when keys are configured)."),
        (413, "Too many pairs in one request, or body too large."),
        (422, "Invalid body, or a pair over max_seq_len with truncate=false."),
        (429, "Overloaded: the queue is full or could not be served in time. See Retry-After."),
        (500, "The forward pass of this request's batch failed."),
        (503, "Not ready, shutting down, or the request's deadline passed before its pairs ran."),
    )
}


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


def render(result: PredictionResult) -> bytes:
    probabilities = result.probabilities
    top = np.argmax(probabilities, axis=1).tolist()
    rows = probabilities.tolist()
    predictions = [
        {
            "label": LABELS[best],
            "scores": {LABELS[0]: row[0], LABELS[1]: row[1], LABELS[2]: row[2]},
            "truncated": truncated,
        }
        for best, row, truncated in zip(top, rows, result.truncated, strict=True)
    ]
    return orjson.dumps({"variant": result.variant, "predictions": predictions})


async def serve_prediction(
    request: Request, body: PairBody | PairsBody, variant: str | None, endpoint: str
) -> Response:
    started = time.perf_counter()
    engine: Engine = request.app.state.engine
    settings: Settings = request.app.state.settings
    variant_label = metrics.UNKNOWN_VARIANT
    status = 500
    try:
        runtime = engine.resolve(variant)
        variant_label = runtime.spec.name
        pairs = body.pairs()
        if len(pairs) > settings.max_pairs_per_request:
            raise ApiError(
                413,
                "too_many_pairs",
                f"{len(pairs)} pairs in one request; "
                f"the limit is max_pairs_per_request={settings.max_pairs_per_request}",
            )
        outcome = await _predict_unless_disconnected(request, engine, pairs, variant_label, body)
        if outcome is None:
            status = CLIENT_CLOSED
            return Response(status_code=CLIENT_CLOSED)
        result = outcome
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
    total = time.perf_counter() - started
    return Response(
        render(result),
        media_type="application/json",
        headers={
            "X-Variant": result.variant,
            "X-Tokenization-Time": f"{timings.tokenization_s * 1000:.3f}",
            "X-Queue-Time": f"{timings.queue_s * 1000:.3f}",
            "X-Inference-Time": f"{timings.inference_s * 1000:.3f}",
            "X-Total-Time": f"{total * 1000:.3f}",
        },
    )


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=_ERRORS,
    summary="Classify premise/hypothesis pairs as entailment, neutral or contradiction",
)
async def predict(body: PredictRequest, request: Request) -> Response:
    """One pair or a list of pairs, answered in order with the three label probabilities.

    Timing headers (milliseconds): `X-Queue-Time` (waiting for the device), `X-Inference-Time` (the forward
    passes that carried these pairs), `X-Tokenization-Time`, `X-Total-Time` (inside the service).
    Demo variants have **untrained weights**: their labels are random (see `GET /variants`).
    """
    return await serve_prediction(request, body, body.variant, "predict")


@router.post(
    "/variants/{name}/predict",
    response_model=PredictResponse,
    responses=_ERRORS,
    summary="Same as /predict, with the variant in the path (for per-variant routing)",
)
async def predict_variant(name: str, body: VariantPredictRequest, request: Request) -> Response:
    return await serve_prediction(request, body, name, "variant_predict")
