"""POST /zero-shot and POST /variants/{name}/zero-shot (issue #26): parse the body into a zero-shot query, let the
transport-neutral ``app.service.zero_shot`` check, route and pair it, and answer through /predict's own path
(``answer_prediction``: same service call, disconnect handling, error mapping and timing headers)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.errors import from_engine
from app.api.inference import answer_prediction, routing_key
from app.api.routes.predict import PREDICTION_ERRORS, timeout_seconds
from app.api.schemas import (
    ZeroShotBody,
    ZeroShotRequest,
    ZeroShotResponse,
    ZeroShotTextBody,
    ZeroShotTextsBody,
)
from app.engine.contract import EngineResult
from app.engine.errors import EngineError
from app.service import zero_shot
from app.service.errors import InvalidQueryError, TooManyPairsError
from app.service.prediction import PredictionService

router = APIRouter(tags=["inference"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    **PREDICTION_ERRORS,
    413: {
        **PREDICTION_ERRORS[413],
        "description": "texts x candidate_labels pairs over max_pairs_per_request, their text over the body limit, or "
        "body too large.",
    },
    422: {
        **PREDICTION_ERRORS[422],
        "description": "Invalid body: no text, empty or duplicate labels, a template without `{}` exactly once, or a "
        "pair over max_seq_len with truncate=false.",
    },
}


async def serve_zero_shot(
    request: Request, body: ZeroShotTextBody | ZeroShotTextsBody, variant: str | None, endpoint: str
) -> Response:
    service: PredictionService = request.app.state.service
    query = zero_shot.ZeroShotQuery(
        texts=body.all_texts(),
        candidate_labels=body.candidate_labels,
        hypothesis_template=body.hypothesis_template,
        multi_label=body.multi_label,
        variant=variant,
        routing_key=routing_key(request),
        truncate=body.truncate,
        timeout_s=timeout_seconds(body.timeout_ms),
        priority=body.priority,
        language=body.language,
    )
    try:
        planned = zero_shot.plan(service, query)
    except (EngineError, InvalidQueryError, TooManyPairsError) as error:
        raise from_engine(error) from None

    def render(result: EngineResult) -> bytes:
        answers = planned.classify(result)
        return orjson.dumps(
            {
                "variant": result.variant,
                "hypothesis_template": planned.template,
                "multi_label": planned.multi_label,
                "results": [
                    {"sequence": one.sequence, "labels": one.labels, "scores": one.scores, "truncated": one.truncated}
                    for one in answers
                ],
            }
        )

    return await answer_prediction(request, planned.query, render, endpoint)


@router.post(
    "/zero-shot",
    response_model=ZeroShotResponse,
    responses=_ERRORS,
    summary="Zero-shot classification: score candidate labels for texts, one NLI pair per text and label",
)
async def classify(body: ZeroShotRequest, request: Request) -> Response:
    """Each text against each candidate label filled into the hypothesis template, batched with every other request
    (texts x labels pairs count against max_pairs_per_request). Scores as transformers' `zero-shot-classification`
    pipeline: `labels` sorted best first with their `scores`. Timing headers as /predict's. Demo variants have
    **untrained weights**: their scores are noise."""
    return await serve_zero_shot(request, body, body.variant, zero_shot.ENDPOINT)


@router.post(
    "/variants/{name}/zero-shot",
    response_model=ZeroShotResponse,
    responses=_ERRORS,
    summary="Same as /zero-shot, with the variant in the path (for per-variant routing)",
)
async def classify_variant(name: str, body: ZeroShotBody, request: Request) -> Response:
    return await serve_zero_shot(request, body, name, zero_shot.VARIANT_ENDPOINT)
