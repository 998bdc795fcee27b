"""Open Inference Protocol routes (KServe v2, as spoken by Triton and MLServer) over the same prediction service as
/predict: each route reads its body (``app.api.oip.parsing``, over the transport-neutral ``app.service.oip``), calls
the service or the engine's state, and renders (``app.api.oip.rendering``). Failures get their status from
``app.api.errors`` like every failure, and the protocol's ``{"error": "<message>"}`` shape through the router's route
class. The model repository extension is in ``repository``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app import __version__
from app.api import accounting
from app.api.binary_tensors import HEADER_LENGTH
from app.api.error_shapes import OIP, Namespace, OipRoute
from app.api.errors import from_engine
from app.api.inference import answer_prediction, routing_key
from app.api.oip import parsing, rendering
from app.api.oip.parsing import MAX_TIMEOUT_US
from app.api.oip.schemas import (
    EXTENSIONS,
    INFER_BODY,
    INFER_ERRORS,
    MODEL_VERSION,
    InferenceResponseBody,
    Liveness,
    ModelMetadata,
    OipError,
    Readiness,
    ServerMetadata,
    openapi_components,
)
from app.engine.errors import EngineError, UnknownVariantError
from app.service import health, zero_shot
from app.service.engine_handle import EngineHandle, ServedVariant
from app.service.errors import InvalidInferenceRequest, InvalidQueryError, TooManyPairsError, UnknownModelVersionError
from app.service.oip.requests import check_version
from app.service.variants import describe

# Re-exported: other modules and tests import these from here.
__all__ = ["MAX_TIMEOUT_US", "MODEL_VERSION", "NAMESPACE", "OipError", "openapi_components", "router"]

PREFIX = "/v2"
router = APIRouter(prefix=PREFIX, tags=["open inference protocol"], route_class=OipRoute)


NAMESPACE = Namespace(PREFIX, OIP)  # every path under /v2 is the protocol's, routed or not


def _model(request: Request, name: str, version: str | None) -> ServedVariant:
    engine: EngineHandle = request.app.state.engine
    try:
        runtime = engine.resolve(name)
        accounting.note_variant(request.scope, runtime.spec.name)
        check_version(name, version)
    except (UnknownVariantError, UnknownModelVersionError) as error:
        raise from_engine(error) from None
    return runtime


def _json(body: Liveness | Readiness, ready: bool) -> Response:
    return Response(
        body.model_dump_json(exclude_none=True), status_code=200 if ready else 503, media_type="application/json"
    )


@router.get("", response_model=ServerMetadata)
async def server_metadata(request: Request) -> ServerMetadata:
    return ServerMetadata(name="xnli-serve", version=__version__, extensions=EXTENSIONS)


@router.get("/health/live", response_model=Liveness, responses={503: {"model": Liveness}})
async def server_live(request: Request) -> Response:
    live = health.liveness(request.app.state.engine)
    return _json(Liveness(live=live), live)


@router.get("/health/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def server_ready(request: Request) -> Response:
    ready = health.readiness(request.app.state.engine).ready
    return _json(Readiness(ready=ready), ready)


@router.get("/models/{name}", response_model=ModelMetadata, responses=INFER_ERRORS, response_model_exclude_none=True)
@router.get(
    "/models/{name}/versions/{version}",
    response_model=ModelMetadata,
    responses=INFER_ERRORS,
    response_model_exclude_none=True,
)
async def model_metadata(request: Request, name: str, version: str | None = None) -> ModelMetadata:
    return rendering.model_metadata(describe(_model(request, name, version)))


@router.get("/models/{name}/ready", response_model=Readiness, responses=INFER_ERRORS)
@router.get("/models/{name}/versions/{version}/ready", response_model=Readiness, responses=INFER_ERRORS)
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    runtime = _model(request, name, version)
    engine: EngineHandle = request.app.state.engine
    ready = engine.variant_ready(runtime.spec.name)  # this variant alone: others may be loading or failed
    return _json(Readiness(name=runtime.spec.name, ready=ready), ready)


@router.post(
    "/models/{name}/infer", response_model=InferenceResponseBody, responses=INFER_ERRORS, openapi_extra=INFER_BODY
)
@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferenceResponseBody,
    responses=INFER_ERRORS,
    openapi_extra=INFER_BODY,
)
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """Same prediction service, engine, batching and metrics as /predict: v2 and native pairs share batches."""
    runtime = _model(request, name, version)
    max_pairs: int = request.app.state.settings.max_pairs_per_request
    raw = await request.body()
    try:
        body = parsing.read_body(raw, request.headers.get(HEADER_LENGTH))
        parsed = parsing.infer_request(body, runtime.spec.name, max_pairs, routing_key(request))
    except (InvalidInferenceRequest, TooManyPairsError) as error:
        raise from_engine(error) from None
    if parsed.zero_shot is not None:  # issue #26: inputs text + candidate_labels
        try:
            planned = zero_shot.plan(request.app.state.service, parsed.zero_shot)
        except (EngineError, InvalidQueryError, TooManyPairsError) as error:
            raise from_engine(error) from None
        render = lambda result: rendering.zero_shot_infer_response(parsed, planned, result)  # noqa: E731
        return await answer_prediction(request, planned.query, render, "v2_infer")
    assert parsed.query is not None
    return await answer_prediction(
        request, parsed.query, lambda result: rendering.infer_response(parsed, result), "v2_infer"
    )
