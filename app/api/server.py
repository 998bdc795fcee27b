"""The uvicorn server with a graceful drain on SIGTERM.

Order matters (MLServer gets it wrong by closing workers first): readiness turns 503 at once and new /predict calls
get 503, everything already accepted finishes (bounded by ``drain_timeout_s``), then the listener closes, the engine
finishes and stops its workers, and the process exits 0. A second SIGTERM, or SIGINT, exits without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Sequence
from types import FrameType

import uvicorn
from fastapi import FastAPI

from app.api.app import create_app
from app.api.edge import EdgeLimits, connection_cap, edge_protocol
from app.engine.engine import Engine
from app.service.engine import ServingEngine
from app.settings import Settings

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, engine: ServingEngine, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.engine = engine
        self.drain_timeout_s = drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self._draining or self._loop is None:
            super().handle_exit(sig, frame)
            return
        # Not recorded in uvicorn's captured signals: it would re-raise SIGTERM at exit and the exit code would
        # be -15 instead of 0 after a clean drain.
        self._draining = True
        self.engine.begin_drain()
        log.info("SIGTERM: draining (readiness 503, new requests 503) for up to %.1fs", self.drain_timeout_s)
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        try:
            async with asyncio.timeout(self.drain_timeout_s):
                await self.engine.wait_idle()
            drained = True
        except TimeoutError:
            drained = False
        if drained:
            log.info("drained: no request in flight; shutting down")
        else:
            log.warning("drain timeout: %d request(s) still in flight; shutting down", self.engine.inflight)
        self.should_exit = True


def server_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    """How every serving process runs uvicorn (one process, or each front end of several): behind the bounded
    HTTP edge (app.api.edge)."""
    limits = EdgeLimits(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        min_body_rate_bytes_s=settings.min_body_rate_bytes_s,
        max_header_bytes=settings.max_header_bytes,
        max_connections=connection_cap(settings.max_connections),
        max_inflight_requests=settings.max_inflight_requests,
    )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=edge_protocol(limits),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        timeout_keep_alive=int(settings.keep_alive_s),
    )


def run_server(settings: Settings, engine: Engine, api_keys: Sequence[str] | None = None) -> None:
    """``api_keys``: as the caller already read them from ``settings`` (read again when not given)."""
    config = server_config(create_app(settings, engine, api_keys), settings)
    DrainingServer(config, engine, settings.drain_timeout_s).run()
