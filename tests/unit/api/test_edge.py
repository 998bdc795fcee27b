"""The connection cap's arithmetic and the unread-bytes probe (the edge's behaviour on sockets is tested in
tests/integration/test_edge.py)."""

from __future__ import annotations

import asyncio
import re
import resource
import socket
import time
from typing import cast

import pytest
from prometheus_client import REGISTRY
from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope
from uvicorn.config import Config
from uvicorn.server import ServerState

from app.api.edge import (
    DESCRIPTOR_RESERVE,
    MAX_PIPELINED,
    EdgeLimits,
    EdgeProtocol,
    connection_cap,
    edge_protocol,
    unread_bytes,
)


@pytest.mark.parametrize(
    ("configured", "descriptors", "expected"),
    [
        (1024, 20_000, 1024),  # plenty of descriptors: the setting
        (1024, 1100, 1100 - DESCRIPTOR_RESERVE),  # the audit's limit: kept below it
        (1024, 100, 1),  # absurdly low limit: still one connection
        (1024, resource.RLIM_INFINITY, 1024),
    ],
)
def test_connection_cap_stays_below_the_descriptor_limit(configured: int, descriptors: int, expected: int) -> None:
    assert connection_cap(configured, descriptors) == expected


@pytest.mark.sockets
async def test_unread_bytes_sees_a_request_the_loop_has_not_read() -> None:
    """Eviction spares a connection whose request waits in the kernel: what a loop busy for seconds looks like."""
    accepted: list[asyncio.Transport] = []
    connected = asyncio.Event()
    received = asyncio.Event()

    class Holder(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.append(transport)  # type: ignore[arg-type]
            connected.set()

        def data_received(self, data: bytes) -> None:
            received.set()

    server = await asyncio.get_running_loop().create_server(Holder, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with socket.create_connection(("127.0.0.1", port)) as client:
            await asyncio.wait_for(connected.wait(), 5)
            assert unread_bytes(accepted[0]) == 0  # silent so far
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")
            time.sleep(0.05)  # noqa: ASYNC251 - the loop is kept busy on purpose: the bytes wait in the kernel
            assert unread_bytes(accepted[0]) == len(b"GET / HTTP/1.1\r\n\r\n")
            await asyncio.wait_for(received.wait(), 5)
            assert unread_bytes(accepted[0]) == 0  # read now
    finally:
        server.close()
    assert unread_bytes(asyncio.Transport()) == 0  # no socket to ask: cannot tell


class RecordingTransport(asyncio.Transport):
    """What a protocol wrote, without a socket: refuses writes after EOF as a real transport does."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = self.eof = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not self.closing:
            self.written += data

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


@pytest.fixture
def release() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
async def connection(release: asyncio.Event) -> tuple[EdgeProtocol, RecordingTransport]:
    """One connection of the edge around an app whose /slow answers when the test releases it."""

    async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        while (await receive()).get("more_body"):
            pass
        path = cast("HTTPScope", scope)["path"]
        if path == "/slow":
            await release.wait()
        body = path.encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    limits = EdgeLimits(
        header_timeout_s=10,
        body_timeout_s=10,
        min_body_rate_bytes_s=1,
        max_header_bytes=8192,
        max_connections=100,
        max_inflight_requests=100,
        write_timeout_s=10,
    )
    config = Config(app=app, http="httptools", log_level="critical", lifespan="off")
    config.load()
    protocol = edge_protocol(limits)(config, ServerState(), {}, asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


def closes(reason: str) -> float:
    return REGISTRY.get_sample_value("xnli_http_connections_closed_total", {"reason": reason}) or 0.0


async def test_pipelined_requests_past_the_bound_leave_every_parked_one_answered(
    connection: tuple[EdgeProtocol, RecordingTransport], release: asyncio.Event
) -> None:
    """Reading stays paused while the parked requests are answered: bytes the client goes on sending cannot close
    the connection under them."""
    protocol, transport = connection
    before = closes("pipeline_limit")
    protocol.data_received(b"GET /fast HTTP/1.1\r\nhost: x\r\n\r\n" + b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n" * 17)
    assert len(protocol.pipeline) == MAX_PIPELINED
    await settle()  # /fast answered and /slow started: uvicorn resumes reading, what arrives is dropped unparsed
    protocol.data_received(b"POST /more HTTP/1.1\r\nhost: x\r\ncontent-length: 300000\r\n\r\n" + b"x" * 300_000)
    assert not transport.is_closing()
    release.set()
    await settle()
    assert transport.written.count(b"HTTP/1.1 200") == MAX_PIPELINED + 1
    assert transport.is_closing()
    assert closes("pipeline_limit") == before + 1


async def test_a_refusal_waits_for_the_answer_still_due(
    connection: tuple[EdgeProtocol, RecordingTransport], release: asyncio.Event
) -> None:
    """Oversized headers on a pipelined request: the 431 follows the answer to the request before it (sent first,
    it would have been read as that request's answer, and that answer lost)."""
    protocol, transport = connection
    protocol.data_received(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
    await asyncio.sleep(0)
    protocol.data_received(b"GET /next HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 9000)
    assert transport.written == b""
    release.set()
    await settle()
    statuses = re.findall(rb"HTTP/1\.1 (\d{3})", bytes(transport.written))
    assert statuses == [b"200", b"431"]
    assert transport.eof
