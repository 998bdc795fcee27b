"""grpc.health.v1 and reflection (app.grpc.health) on a real ``grpc.aio`` server on 127.0.0.1: the status follows the
engine's readiness (loading, ready, draining, stopped) in Check, List and Watch streams, unknown services are told
apart, Watch streams are capped and end when the server stops, and reflection lists the services only when asked
for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from app.grpc import health
from app.grpc.health import INFERENCE_SERVICE, NOT_SERVING, SERVING, EngineHealth, add_health_service
from app.grpc.server import GrpcServer
from app.grpc.service import InferenceServicer
from tests.support.helpers import free_port

pytestmark = pytest.mark.sockets


@dataclass
class EngineState:
    """What readiness reads of an engine."""

    ready: bool = False
    draining: bool = False
    variants: dict[str, Any] = field(default_factory=dict)


@dataclass
class Served:
    engine: EngineState
    service: EngineHealth
    stub: Any  # grpc.aio stubs: the generated stubs' types describe the blocking API
    channel: grpc.aio.Channel


@pytest.fixture
async def served(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    monkeypatch.setattr(health, "WATCH_INTERVAL_S", 0.02)
    engine = EngineState()
    server = grpc.aio.server()
    service = add_health_service(engine, server, with_reflection=False)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Served(engine, service, health_pb2_grpc.HealthStub(channel), channel)
    service.stop()
    await server.stop(None)


async def check(served: Served, service: str = "") -> int:
    reply = await served.stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


@pytest.mark.parametrize("service", ["", INFERENCE_SERVICE])
@pytest.mark.parametrize(
    ("ready", "draining", "expected"),
    [(False, False, NOT_SERVING), (True, False, SERVING), (True, True, NOT_SERVING)],
    ids=["loading", "ready", "draining"],
)
async def test_check_answers_the_engines_readiness(
    served: Served, service: str, ready: bool, draining: bool, expected: int
) -> None:
    served.engine.ready, served.engine.draining = ready, draining
    assert await check(served, service) == expected


async def test_list_names_both_services(served: Served) -> None:
    served.engine.ready = True
    reply = await served.stub.List(health_pb2.HealthListRequest(), timeout=5)  # type: ignore[attr-defined]
    assert {name: entry.status for name, entry in reply.statuses.items()} == {"": SERVING, INFERENCE_SERVICE: SERVING}


async def test_an_unknown_service_is_not_found(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await check(served, "inference.Nope")
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND
    assert INFERENCE_SERVICE in str(refused.value.details())


async def test_a_watch_stream_hears_loading_ready_draining_and_stopped(served: Served) -> None:
    heard: list[int] = []
    stream = served.stub.Watch(health_pb2.HealthCheckRequest(service=INFERENCE_SERVICE))

    async def until(count: int) -> None:
        while len(heard) < count:
            heard.append((await stream.read()).status)

    await asyncio.wait_for(until(1), 5)
    served.engine.ready = True
    await asyncio.wait_for(until(2), 5)
    served.engine.draining = True
    await asyncio.wait_for(until(3), 5)
    served.engine.draining = False  # (a real drain does not end; readiness back is heard all the same)
    await asyncio.wait_for(until(4), 5)
    assert heard == [NOT_SERVING, SERVING, NOT_SERVING, SERVING]
    served.service.stop()
    await asyncio.wait_for(until(5), 5)
    assert heard[-1] == NOT_SERVING
    assert await asyncio.wait_for(stream.read(), 5) is grpc.aio.EOF  # the stream ends: the server may stop at once
    assert await check(served) == NOT_SERVING
    served.engine.ready = True
    assert await check(served) == NOT_SERVING  # for good


async def test_a_watch_on_an_unknown_service_says_so(served: Served) -> None:
    stream = served.stub.Watch(health_pb2.HealthCheckRequest(service="inference.Nope"))
    reply = await asyncio.wait_for(stream.read(), 5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    stream.cancel()


async def test_watch_streams_are_capped(served: Served) -> None:
    streams = [served.stub.Watch(health_pb2.HealthCheckRequest()) for _ in range(health.MAX_WATCHERS)]
    for stream in streams:
        await asyncio.wait_for(stream.read(), 5)
    extra = served.stub.Watch(health_pb2.HealthCheckRequest())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await asyncio.wait_for(extra.read(), 5)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await check(served) == NOT_SERVING  # Check still answers
    streams.pop().cancel()
    for _ in range(100):  # the slot comes back once the server has seen the cancel
        if served.service.watchers < health.MAX_WATCHERS:
            break
        await asyncio.sleep(0.02)
    again = served.stub.Watch(health_pb2.HealthCheckRequest())
    assert (await asyncio.wait_for(again.read(), 5)).status == NOT_SERVING
    for stream in [*streams, again]:
        stream.cancel()


async def listed_services(port: int) -> list[str] | grpc.StatusCode:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
        call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        try:
            reply = await asyncio.wait_for(call.read(), 5)
        except grpc.aio.AioRpcError as error:
            return error.code()
        call.cancel()
        return sorted(entry.name for entry in reply.list_services_response.service)


@pytest.mark.parametrize("with_reflection", [False, True], ids=["default", "reflection-on"])
async def test_the_server_serves_health_always_and_reflection_when_asked(
    servicer: InferenceServicer, with_reflection: bool
) -> None:
    port = free_port()
    server = GrpcServer(
        servicer,
        "127.0.0.1",
        port,
        max_message_bytes=1 << 20,
        reuse_port=False,
        with_reflection=with_reflection,
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=INFERENCE_SERVICE), timeout=5)
            assert reply.status == SERVING  # the unit tests' engine is loaded and warmed up
        listed = await listed_services(port)
        if with_reflection:
            assert listed == sorted(
                [INFERENCE_SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"]
            )
        else:
            assert listed is grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(0)
    assert server.health is not None
    assert server.health.status() == NOT_SERVING
