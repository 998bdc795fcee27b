"""The gRPC server's life: built as the settings say (or not at all), bound alone unless front ends share the port,
and a taken port refused with a clear error instead of a silent second listener."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from app.grpc.server import GrpcBindError, GrpcServer, address, grpc_server
from app.settings import Settings


class Unused:
    """Stands in for the engine and the prediction service: building and binding a server calls neither."""


def build(**settings: Any) -> GrpcServer | None:
    return grpc_server(Settings(**settings), Unused(), Unused(), [], reuse_port=False)  # type: ignore[arg-type]


def test_the_off_switch() -> None:
    assert build(grpc_enabled=False) is None


def test_on_the_http_host_and_the_grpc_port_by_default() -> None:
    server = build(host="0.0.0.0")
    assert server is not None
    assert (server.address, server.reuse_port) == ("0.0.0.0:8001", False)
    assert server.max_message_bytes == Settings().max_body_bytes


@pytest.mark.parametrize(("host", "expected"), [("127.0.0.1", "127.0.0.1:9"), ("::1", "[::1]:9"), ("::", "[::]:9")])
def test_addresses(host: str, expected: str) -> None:
    assert address(host, 9) == expected


@pytest.mark.sockets
async def test_a_taken_port_is_refused() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = build(grpc_port=port)
        assert server is not None
        with pytest.raises(GrpcBindError, match=f"127.0.0.1:{port}"):
            await server.start()


@pytest.mark.sockets
async def test_starts_and_stops() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = build(grpc_port=port)
    assert server is not None
    assert await server.start() == port
    await server.stop(0)
    await server.stop(0)  # a second stop is a no-op
