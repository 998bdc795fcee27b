"""Builds the FastAPI application around an engine; loading and warm-up run beside the open port."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.errors import install_error_handlers
from app.api.middleware import RequestContextMiddleware
from app.api.routes import health, predict, variants
from app.engine.engine import Engine
from app.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """
Multilingual natural-language inference (premise + hypothesis -> entailment / neutral / contradiction) served from
several XLM-RoBERTa variants with dynamic batching.

**Demo weights are untrained.** The checkpoints made by `xnli-serve build-demo-store` have random weights: their
answers are noise and exist to exercise the service. `GET /variants` flags them (`demo`, `untrained`); drop real
fine-tuned checkpoints into `model_store/` to serve real predictions.
"""


def create_app(settings: Settings, engine: Engine) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def load() -> None:
            try:
                await asyncio.to_thread(engine.load)
                log.info("all variants ready", extra={"variants": [name for name in engine.variants]})
            except Exception as error:
                log.error("loading failed, the service stays unready: %s", error)

        loading = asyncio.create_task(load())
        try:
            yield
        finally:
            await loading
            await asyncio.to_thread(engine.close)

    app = FastAPI(
        title="xnli-serve",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    app.include_router(predict.router)
    app.include_router(variants.router)
    app.include_router(health.router)
    return app
