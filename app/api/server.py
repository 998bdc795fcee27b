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
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import cast

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import listener_drain
from app.api.app import create_app
from app.api.edge import EdgeLimits, connection_cap, edge_protocol
from app.engine.engine import Engine
from app.grpc.server import GrpcBindError, GrpcServer, grpc_server  # gRPC beside HTTP (issue #26)
from app.service.engine_handle import EngineHandle
from app.settings import Settings

log = logging.getLogger(__name__)


HANDOVER_S = 2.0  # after the drain, at most this long for what reached the process (queued, or on its way) to arrive
GRPC_STOP_MARGIN_S = 0.25  # gRPC's grace in the hand-over ends this long before the hand-over's deadline
_SETTLE_POLL_S = 0.01


async def _poll_until(done: Callable[[], bool], deadline: float) -> None:
    """Wait until ``done()`` (kernel and socket state: there is no event to await) or ``deadline``; returns right
    after a check that held, with no await in between."""
    while not done():
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(_SETTLE_POLL_S)


class CloseWhileDraining:
    """Every response started while the server drains carries ``Connection: close``.

    A client then sends its next request on a new connection (answered, queued and answered, or refused) instead of
    reusing one this process is about to close: a request sent just as the server closes an idle keep-alive
    connection is reset unanswered (the keep-alive close race)."""

    def __init__(self, app: ASGIApp, draining: Callable[[], bool]) -> None:
        self.app = app
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.draining():
                headers = [(name, value) for name, value in message.get("headers", ()) if name.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)


class DrainingServer(uvicorn.Server):
    """uvicorn with the drain of the module's docstring.

    ``last_holder``: whether this process holds the last copy of its listening socket (one process serving alone);
    it then stops new handshakes and answers the connections the kernel already queued before closing the socket
    (app.api.listener_drain). A front end is not the last holder: the supervisor keeps a copy and answers the queue
    once every front end has exited.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        engine: EngineHandle,
        drain_timeout_s: float,
        *,
        last_holder: bool = True,
        grpc: GrpcServer | None = None,
    ) -> None:
        # server_config always passes the app itself (ASGI 3), never an import string.
        config.app = CloseWhileDraining(cast("ASGIApp", config.app), lambda: self._draining)
        super().__init__(config)
        self.engine = engine
        self.drain_timeout_s = drain_timeout_s
        self.last_holder = last_holder
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self.grpc = grpc

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        # -- gRPC (issue #26): started in this loop before the HTTP port opens; stopped in shutdown (or here) ------
        if self.grpc is not None:
            try:
                await self.grpc.start()
            except GrpcBindError as error:
                log.error("%s", error)
                raise SystemExit(1) from None
        try:
            await super().serve(sockets)
        finally:
            if self.grpc is not None:
                await self.grpc.stop(None)  # a no-op after shutdown stopped it
        # -- end gRPC --

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

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown closes the listening socket, then every connection without a request in progress;
        after a drain, first make sure nothing that reached this process is among those closed unanswered."""
        grpc_stopping: asyncio.Future[None] | None = None
        try:
            if self._draining and not self.force_exit:
                # gRPC (issue #26): its answers on their way out finish alongside HTTP's hand-over, which waits for
                # them before its last look at the connections (an await after that look would let a connection turn
                # idle with its client's request on the way, and uvicorn would close it unanswered). Its grace ends
                # before the hand-over's deadline, so that wait always ends with gRPC stopped.
                if self.grpc is not None:
                    grpc_stopping = asyncio.ensure_future(self.grpc.stop(HANDOVER_S - GRPC_STOP_MARGIN_S))
                await self._hand_over(grpc_stopping)
            elif self.grpc is not None:
                await self.grpc.stop(None)
        finally:
            try:
                await super().shutdown(sockets)
            finally:
                if grpc_stopping is not None:
                    await grpc_stopping  # done already, unless the hand-over failed or was cut short

    async def _hand_over(self, also_wait_for: asyncio.Future[None] | None = None) -> None:
        deadline = time.monotonic() + HANDOVER_S
        listeners = [listener.fileno() for server in self.servers for listener in server.sockets or ()]
        if self.last_holder:
            for listener in listeners:
                listener_drain.refuse_new_connections(listener)
            # The loop goes on accepting what the kernel queued (each answered 503 draining by the app).
            await _poll_until(lambda: not any(listener_drain.queued_connections(fd) for fd in listeners), deadline)
        for server in self.servers:
            server.close()  # stop accepting (front ends: the queue is left to the others and the supervisor)
        # A connection the loop accepted in this pass reaches the app (connection_made, hence server_state) only on
        # a later pass: let one go by, or the check below would not see it and uvicorn would close it idle.
        await asyncio.sleep(_SETTLE_POLL_S)

        # Every response now closes its connection: wait for each open one to carry its client's next request (or
        # for the deadline: a client that sends nothing more). The last check runs with no await between it and
        # uvicorn closing what is left.
        def settled() -> bool:
            if self.force_exit:  # a second signal: stop waiting
                return True
            others_done = also_wait_for is None or also_wait_for.done()
            return others_done and not any(map(self._may_still_send, list(self.server_state.connections)))

        await _poll_until(settled, deadline)

    @staticmethod
    def _may_still_send(connection: object) -> bool:
        """Whether closing ``connection`` now could drop a request: it is open and carries none, so its client may
        be sending one (an idle keep-alive connection, or one opened during the drain, whose request is on its way).
        One with a request in progress is safe: uvicorn lets its response finish, and the response closes it."""
        cycle = getattr(connection, "cycle", None)
        if cycle is not None and not cycle.response_complete:
            return False
        transport: asyncio.Transport | None = getattr(connection, "transport", None)
        return transport is not None and not transport.is_closing()


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
        write_timeout_s=settings.write_timeout_s,
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


def start_tracing(role: str) -> None:
    """Tracing (issue #27) from the OTEL_* environment; a value it cannot honour stops start-up (exit code 2)."""
    from app.tracing.setup import TracingConfigError, configure

    try:
        configure(role=role)
    except TracingConfigError as error:
        log.error("%s", error)
        raise SystemExit(2) from None


def run_server(settings: Settings, engine: Engine, api_keys: Sequence[str] | None = None) -> None:
    """``api_keys``: as the caller already read them from ``settings`` (read again when not given)."""
    start_tracing("server")  # tracing (issue #27): before the app is built, which adds its middleware if on
    keys = list(api_keys) if api_keys is not None else settings.load_api_keys()
    app = create_app(settings, engine, keys)
    config = server_config(app, settings)
    grpc = grpc_server(settings, engine, app.state.service, keys, reuse_port=False)  # gRPC (issue #26)
    DrainingServer(config, engine, settings.drain_timeout_s, grpc=grpc).run()
