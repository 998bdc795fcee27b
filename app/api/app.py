"""Builds the FastAPI application around an engine; loading and warm-up run beside the open port."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import __version__, tracing
from app.api.error_shapes import Namespaces
from app.api.errors import install_error_handlers
from app.api.middleware import BodyLimitMiddleware, RequestContextMiddleware, TracingMiddleware
from app.api.routes import health, open_inference, pages, predict, repository, variants
from app.api.routes import zero_shot as zero_shot_routes  # issue #26
from app.api.security import ApiKeyMiddleware
from app.service.engine_handle import EngineHandle
from app.service.prediction import PredictionService
from app.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """
Multilingual natural-language inference (premise + hypothesis -> entailment / neutral / contradiction) served from
several XLM-RoBERTa variants with dynamic batching.

**Demo weights are untrained.** The checkpoints made by `xnli-serve build-demo-store` have random weights: their
answers are noise and exist to exercise the service. `GET /variants` flags them (`demo`, `untrained`); drop real
fine-tuned checkpoints into `model_store/` to serve real predictions.
"""


def _complete_openapi(app: FastAPI, settings: Settings) -> None:
    """Add to the generated OpenAPI what FastAPI cannot see: limits that are settings (pairs per request) and the
    schemas of bodies parsed by hand (Open Inference Protocol infer)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, component in open_inference.openapi_components().items():
                components.setdefault(name, component)
            for name in ("PairsRequest", "PairsBody"):
                inputs = components.get(name, {}).get("properties", {}).get("inputs")
                if inputs is not None:
                    inputs["maxItems"] = settings.max_pairs_per_request
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings, engine: EngineHandle, api_keys: Sequence[str] | None = None) -> FastAPI:
    """``api_keys``: as the caller already read them from ``settings`` (read here when not given)."""

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
            if tracing.STATE.active:  # tracing (issue #27): what is queued leaves, within a bounded wait
                from app.tracing.setup import shutdown

                await asyncio.to_thread(shutdown)

    app = FastAPI(
        title="xnli-serve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # /docs and /redoc are served by app.api.routes.pages from assets shipped in a package, not a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.settings = settings
    app.state.service = PredictionService(engine, settings.max_pairs_per_request, settings.max_body_bytes)
    _complete_openapi(app, settings)
    install_error_handlers(app)
    # Each protocol's errors take its shape: routes by their route class, the rest by the namespace its router owns.
    namespaces = Namespaces(open_inference.NAMESPACE)
    app.router.default = namespaces.not_found
    error_shape = namespaces.shape_for
    # Starlette runs the middleware added last first: request ids and logs wrap everything, then CORS (so
    # preflights and 401s carry its headers), then auth, then the body limit nearest the routes.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes, shape_of=error_shape)
    keys = list(api_keys) if api_keys is not None else settings.load_api_keys()
    if keys:
        app.add_middleware(
            ApiKeyMiddleware,
            keys=keys,
            public_health=settings.public_health,
            public_metrics=settings.public_metrics,
            public_docs=settings.public_docs,
            shape_of=error_shape,
        )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "X-Request-Id",
                "X-Routing-Key",
                "traceparent",
                "tracestate",
            ],
            expose_headers=[
                "X-Queue-Time",
                "X-Inference-Time",
                "X-Tokenization-Time",
                "X-Total-Time",
                "X-Request-Id",
                "X-Variant",
                "traceparent",  # tracing (issue #27)
            ],
        )
    app.add_middleware(RequestContextMiddleware, shape_of=error_shape)
    if tracing.STATE.active:  # tracing (issue #27): outermost, so its span sees every answer
        app.add_middleware(TracingMiddleware)
    app.include_router(predict.router)
    app.include_router(variants.router)
    app.include_router(health.router)
    app.include_router(open_inference.router)
    app.include_router(repository.router)
    app.include_router(zero_shot_routes.router)  # issue #26: POST /zero-shot, /variants/{name}/zero-shot
    pages.install_pages(app, api_keys=bool(keys))
    return app
