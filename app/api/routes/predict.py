"""POST /predict and POST /variants/{name}/predict: the native protocol's adapter (parse the body into a query for the
prediction service, render its result)."""

from __future__ import annotations

import math
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.inference import answer_prediction, routing_key
from app.api.schemas import (
    ErrorResponse,
    PairBody,
    PairsBody,
    PredictRequest,
    PredictResponse,
    VariantPredictRequest,
)
from app.engine.contract import EngineResult
from app.engine.tasks.nli import NLI
from app.service.prediction import PredictionQuery

router = APIRouter(tags=["inference"])

# The native prediction routes' error statuses (OpenAPI); /zero-shot's say the same but for 413 and 422.
PREDICTION_ERRORS: dict[int | str, dict[str, Any]] = {
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


def render(result: EngineResult) -> bytes:
    predictions = NLI.rows(result.probabilities, result.truncated)
    return orjson.dumps({"variant": result.variant, "predictions": predictions})


def timeout_seconds(timeout_ms: float | None) -> float | None:
    """The schema accepts any positive ``timeout_ms``; the smallest of them (5e-324) underflows to 0.0 s once divided,
    so it is kept at the smallest positive float: a deadline too short to meet (422), not an invalid value."""
    if timeout_ms is None:
        return None
    return max(timeout_ms / 1000.0, math.ulp(0.0))


async def serve_prediction(
    request: Request, body: PairBody | PairsBody, variant: str | None, endpoint: str
) -> Response:
    query = PredictionQuery(
        pairs=body.pairs(),
        variant=variant,
        routing_key=routing_key(request),
        truncate=body.truncate,
        timeout_s=timeout_seconds(body.timeout_ms),
        priority=body.priority,
        language=body.language,
    )
    return await answer_prediction(request, query, render, endpoint)


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=PREDICTION_ERRORS,
    summary="Classify premise/hypothesis pairs as entailment, neutral or contradiction",
)
async def predict(body: PredictRequest, request: Request) -> Response:
    """One pair or a list of pairs, answered in order with the three label probabilities.

    Without `variant`, the catalogue's `[traffic] split` picks one (the same for every request carrying the same
    `X-Routing-Key` header); `X-Variant` names the variant that answered.

    Timing headers (milliseconds): `X-Queue-Time` (waiting for the device), `X-Inference-Time` (the forward
    passes that carried these pairs), `X-Tokenization-Time`, `X-Total-Time` (inside the service).
    Demo variants have **untrained weights**: their labels are random (see `GET /variants`).
    """
    return await serve_prediction(request, body, body.variant, "predict")


@router.post(
    "/variants/{name}/predict",
    response_model=PredictResponse,
    responses=PREDICTION_ERRORS,
    summary="Same as /predict, with the variant in the path (for per-variant routing)",
)
async def predict_variant(name: str, body: VariantPredictRequest, request: Request) -> Response:
    return await serve_prediction(request, body, name, "variant_predict")
