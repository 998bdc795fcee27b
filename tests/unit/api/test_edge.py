"""The connection cap's arithmetic and the unread-bytes probe (the edge's behaviour on sockets is tested in
tests/integration/test_edge.py)."""

from __future__ import annotations

import asyncio
import resource
import socket
import time

import pytest

from app.api.edge import DESCRIPTOR_RESERVE, connection_cap, unread_bytes


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
