"""The Open Inference Protocol's model repository extension (as Triton speaks it): list, load, reload and unload
variants while the service runs.

The repository is the catalogue file. ``load`` re-reads the named entry from it, so an entry added since start-up, or
a checkpoint changed on disk, is served without a restart; the version serving now keeps serving until the new one
is loaded, guarded and warmed up, and keeps serving if that fails. Protected by the API key like every other route.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.responses import Response

from app.api.error_shapes import OipRoute
from app.api.errors import ApiError, first_problem, from_engine
from app.api.oip.schemas import MODEL_VERSION, error_responses
from app.engine.engine import RepositoryEntry, RepositoryState
from app.engine.errors import EngineError
from app.service.engine_handle import EngineHandle

router = APIRouter(prefix="/v2/repository", tags=["open inference protocol: model repository"], route_class=OipRoute)


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ready: bool = False  # only the variants that serve now


class IndexEntry(BaseModel):
    name: str
    version: str
    state: str  # READY, UNAVAILABLE or LOADING
    reason: str


class RepositoryRequest(BaseModel):
    """Load and unload bodies: Triton's clients send ``parameters`` (``unload_dependents`` on unload)."""

    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] | None = None


_ERRORS = error_responses(
    (400, "Malformed request, or the load failed (catalogue entry, checkpoint, labels, accuracy guard)."),
    (404, "No such variant in the catalogue."),
    (409, "The variant is being loaded or unloaded already, or start-up is still loading."),
    (500, "The load failed for a reason the catalogue entry does not explain."),
    (503, "The service is shutting down."),
)


Body = TypeVar("Body", bound=BaseModel)


def _optional_body(model: type[BaseModel]) -> dict[str, Any]:
    """The body as OpenAPI documents it (parsed by hand: clients post an empty body or JSON without a Content-Type)."""
    schema = {"schema": model.model_json_schema()}
    return {"requestBody": {"required": False, "content": {"application/json": schema}}}


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "invalid_repository_request", message)


async def _parse(request: Request, model: type[Body]) -> Body:
    """An empty body is an empty request (tritonclient posts none to index); anything else must be the JSON object."""
    raw = await request.body()
    if not raw.strip():
        return model()
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        raise _bad_request(f"invalid repository request: {first_problem(error)}") from None


def _entry(entry: RepositoryEntry) -> IndexEntry:
    return IndexEntry(name=entry.name, version=MODEL_VERSION, state=str(entry.state), reason=entry.reason)


def _json(entry: IndexEntry) -> Response:
    return Response(entry.model_dump_json(), media_type="application/json")


@router.post("/index", response_model=list[IndexEntry], responses=_ERRORS, openapi_extra=_optional_body(IndexRequest))
async def repository_index(request: Request) -> list[IndexEntry]:
    """Every variant of the catalogue file and every variant the service holds, with its state and why."""
    body = await _parse(request, IndexRequest)
    engine: EngineHandle = request.app.state.engine
    entries = await asyncio.to_thread(engine.repository_index)
    return [_entry(entry) for entry in entries if not body.ready or entry.state is RepositoryState.READY]


@router.post(
    "/models/{name}/load", response_model=IndexEntry, responses=_ERRORS, openapi_extra=_optional_body(RepositoryRequest)
)
async def load_model(request: Request, name: str) -> Response:
    """Load ``name`` as its catalogue entry says now (or reload it), then switch its traffic to it at once."""
    body = await _parse(request, RepositoryRequest)
    overrides = sorted(body.parameters or {})
    if overrides:
        raise _bad_request(
            f"load parameters {overrides} are not supported: the catalogue is the repository; edit the entry of "
            f"{name!r} in it, then load again"
        )
    engine: EngineHandle = request.app.state.engine
    try:
        await engine.load_variant(name, min_queue_pairs=request.app.state.settings.max_pairs_per_request)
    except EngineError as error:
        raise from_engine(error) from None
    return _json(_entry(await asyncio.to_thread(engine.repository_entry, name)))


@router.post(
    "/models/{name}/unload",
    response_model=IndexEntry,
    responses=_ERRORS,
    openapi_extra=_optional_body(RepositoryRequest),
)
async def unload_model(request: Request, name: str) -> Response:
    """Stop admitting requests for ``name``, let accepted ones finish, then free its memory."""
    body = await _parse(request, RepositoryRequest)
    unexpected = sorted(set(body.parameters or {}) - {"unload_dependents"})
    if unexpected:
        raise _bad_request(f"unknown unload parameters {unexpected}; only unload_dependents (variants have none)")
    if not isinstance((body.parameters or {}).get("unload_dependents", False), bool):
        raise _bad_request("parameter 'unload_dependents' must be a boolean")
    engine: EngineHandle = request.app.state.engine
    try:
        await engine.unload_variant(name)
    except EngineError as error:
        raise from_engine(error) from None
    return _json(_entry(await asyncio.to_thread(engine.repository_entry, name)))
