"""The drain's hand-over (app.api.server.DrainingServer.shutdown): when uvicorn's own shutdown starts closing every
connection without a request in progress, no open connection may still be carrying its client's next request.

The connections here are stand-ins with the two attributes the hand-over reads (``cycle``, ``transport``); uvicorn's
shutdown is replaced by a recorder, so the test sees exactly what uvicorn would have closed. The real sockets are
exercised by tests/integration/test_frontend.py and test_drain.py (SIGTERM under load)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn

from app.api.server import HANDOVER_S, DrainingServer


@dataclass
class Cycle:
    response_complete: bool


@dataclass
class Transport:
    closing: bool = False

    def is_closing(self) -> bool:
        return self.closing


@dataclass(eq=False)
class Connection:
    """A kept-alive connection: idle (its last response sent, the connection open) or with a request in progress."""

    cycle: Cycle | None = None
    transport: Transport = field(default_factory=Transport)

    def carry_request(self) -> None:
        self.cycle = Cycle(response_complete=False)

    def answer_keeping_alive(self) -> None:
        """An answer whose start went out before the drain (no ``Connection: close``): the connection stays open."""
        assert self.cycle is not None
        self.cycle.response_complete = True

    @property
    def closed_unanswered_if_uvicorn_shut_down_now(self) -> bool:
        return not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete)


class Listening:
    """A stand-in for the event loop's server: ``close`` may run something in the loop's next pass, as an accept in
    the closing pass does (its ``connection_made`` is scheduled, not called)."""

    sockets: tuple[()] = ()

    def __init__(self, on_close: Any = None) -> None:
        self.on_close = on_close

    def close(self) -> None:
        if self.on_close is not None:
            asyncio.get_running_loop().call_soon(self.on_close)


class Engine:
    inflight = 0

    def begin_drain(self) -> None:
        pass

    async def wait_idle(self) -> None:
        pass


class SlowGrpcStop:
    """gRPC's drain, taking ``seconds``; ``during`` runs halfway through it."""

    def __init__(self, seconds: float, during: Any = None) -> None:
        self.seconds = seconds
        self.during = during
        self.stopped = False
        self.grace_s: float | None = None

    async def start(self) -> None:
        pass

    async def stop(self, grace_s: float | None) -> None:
        self.grace_s = grace_s
        await asyncio.sleep(self.seconds / 2)
        if self.during is not None:
            self.during()
        await asyncio.sleep(self.seconds / 2)
        self.stopped = True


class FailingGrpcStop(SlowGrpcStop):
    async def stop(self, grace_s: float | None) -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("gRPC could not stop")


Seen = list[tuple[list[bool], bool | None]]


def draining_server(
    monkeypatch: pytest.MonkeyPatch, connections: list[Connection], grpc: SlowGrpcStop | None, listening: Listening
) -> tuple[DrainingServer, Seen]:
    """A draining server (a front end: not the socket's last holder) and, filled when uvicorn's shutdown would
    start: which of its connections that shutdown would close with their client's next request possibly on the way,
    and whether gRPC had stopped (None: no gRPC)."""
    server = DrainingServer(
        uvicorn.Config(app=lambda scope, receive, send: None),
        engine=Engine(),  # type: ignore[arg-type]
        drain_timeout_s=1.0,
        last_holder=False,
        grpc=grpc,  # type: ignore[arg-type]
    )
    server._draining = True
    server.servers = [listening]  # type: ignore[list-item]
    server.server_state.connections = set()
    for connection in connections:
        server.server_state.connections.add(connection)  # type: ignore[arg-type]
    at_uvicorn_shutdown: Seen = []

    async def uvicorn_shutdown(self: uvicorn.Server, sockets: object = None) -> None:
        connections: set[Connection] = self.server_state.connections  # type: ignore[assignment]
        idle = [connection.closed_unanswered_if_uvicorn_shut_down_now for connection in connections]
        at_uvicorn_shutdown.append((idle, None if grpc is None else grpc.stopped))

    monkeypatch.setattr(uvicorn.Server, "shutdown", uvicorn_shutdown)
    return server, at_uvicorn_shutdown


def test_a_connection_that_turns_idle_while_grpc_stops_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection with a request in progress at the hand-over's first look is open and idle while gRPC is still
    stopping (its answer's start went out before the drain, so it kept the connection alive); its client sends the
    next request after gRPC has stopped. uvicorn's shutdown must find that request in progress, not the connection
    idle (which it would close with the request on its way: a reset)."""
    connection = Connection()
    connection.carry_request()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        def turn_idle_then_send_again() -> None:
            connection.answer_keeping_alive()
            loop.call_later(0.25, connection.carry_request)  # after gRPC has stopped

        grpc = SlowGrpcStop(0.3, during=turn_idle_then_send_again)
        server, seen = draining_server(monkeypatch, [connection], grpc, Listening())
        await server.shutdown()
        assert seen == [([False], True)]  # and uvicorn's shutdown began only once gRPC had stopped
        assert grpc.grace_s is not None
        assert grpc.grace_s < HANDOVER_S  # so the hand-over's wait for it ends before its own deadline

    asyncio.run(scenario())


def test_a_connection_accepted_as_the_listener_closes_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop accepted a connection in the pass that stops accepting: it joins the server's connections one pass
    later, idle, and its client's request arrives shortly after. The hand-over must see it and wait for it."""
    late = Connection()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        def connection_made() -> None:
            server.server_state.connections.add(late)  # type: ignore[arg-type]
            loop.call_later(0.1, late.carry_request)

        server, seen = draining_server(monkeypatch, [], None, Listening(on_close=connection_made))
        await server.shutdown()
        assert seen == [([False], None)]

    asyncio.run(scenario())


def test_a_grpc_stop_that_fails_still_lets_uvicorn_shut_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its error is raised, not lost in a task nobody awaits, and the HTTP side still closes (and the engine with
    it, in uvicorn's lifespan shutdown)."""

    async def scenario() -> None:
        grpc = FailingGrpcStop(0.0)
        server, seen = draining_server(monkeypatch, [], grpc, Listening())
        with pytest.raises(RuntimeError, match="could not stop"):
            await server.shutdown()
        assert seen == [([], False)]

    asyncio.run(scenario())
