"""GET /variants: what is served, how, and whether its weights are real."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.api.errors import ApiError, from_engine
from app.api.schemas import ErrorResponse, VariantInfo, VariantList
from app.demo.build_store import DEMO_NOTICE
from app.engine.engine import Engine
from app.engine.errors import UnknownVariantError

router = APIRouter(tags=["variants"])


@router.get("/variants", response_model=VariantList)
async def list_variants(request: Request) -> dict[str, Any]:
    engine: Engine = request.app.state.engine
    described = [runtime.describe() for runtime in engine.variants.values()]
    untrained = [entry["name"] for entry in described if entry["untrained"] and entry["enabled"]]
    notice = f"{DEMO_NOTICE} Variants: {', '.join(untrained)}." if untrained else None
    return {"default_variant": engine.default_variant, "notice": notice, "variants": described}


@router.get("/variants/{name}", response_model=VariantInfo, responses={404: {"model": ErrorResponse}})
async def get_variant(name: str, request: Request) -> dict[str, Any]:
    engine: Engine = request.app.state.engine
    runtime = engine.variants.get(name)
    if runtime is None:
        error: ApiError = from_engine(UnknownVariantError(name, list(engine.variants)))
        raise error
    return runtime.describe()
