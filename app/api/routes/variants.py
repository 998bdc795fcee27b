"""GET /variants: what is served, how, and whether its weights are real."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.errors import from_engine
from app.api.schemas import ErrorResponse, VariantList
from app.demo.build_store import DEMO_NOTICE
from app.engine.errors import UnknownVariantError
from app.service.engine_handle import EngineHandle
from app.service.variants import VariantInfo, describe, untrained_variants

router = APIRouter(tags=["variants"])


@router.get("/variants", response_model=VariantList)
async def list_variants(request: Request) -> VariantList:
    engine: EngineHandle = request.app.state.engine
    described = [describe(runtime) for runtime in engine.variants.values()]
    untrained = untrained_variants(described)
    notice = f"{DEMO_NOTICE} Variants: {', '.join(untrained)}." if untrained else None
    return VariantList(default_variant=engine.default_variant, notice=notice, variants=described)


@router.get("/variants/{name}", response_model=VariantInfo, responses={404: {"model": ErrorResponse}})
async def get_variant(name: str, request: Request) -> VariantInfo:
    engine: EngineHandle = request.app.state.engine
    runtime = engine.variants.get(name)
    if runtime is None:
        raise from_engine(UnknownVariantError(name, list(engine.variants)))
    return describe(runtime)
