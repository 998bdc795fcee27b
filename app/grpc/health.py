"""The standard gRPC health service (``grpc.health.v1.Health``) beside the Open Inference Protocol, and server
reflection when asked for.

Kubernetes' ``grpc:`` probes, ``grpc_health_probe``, Envoy and most gRPC load balancers ask ``grpc.health.v1``, not the
Open Inference Protocol's ``ServerReady``; both answer from the same readiness as ``/health/ready`` (every enabled
variant loaded and warmed up, the workers live, no drain begun). Two service names are known: ``""`` (the server) and
``inference.GRPCInferenceService``; any other is NOT_FOUND (``Check``) or SERVICE_UNKNOWN (``Watch``), as the
protocol says.

Neither health nor reflection asks for an API key: probes carry none, and what they reveal (ready or not; the
service's schema, published in ``app/grpc/proto``) is no secret. Each ``Watch`` stream holds one of the process's
concurrent-RPC slots (``XNLI_SERVE_MAX_INFLIGHT_REQUESTS``) for as long as it stays open, so a client without a key
could otherwise hold all of them: at most ``MAX_WATCHERS`` at once, RESOURCE_EXHAUSTED beyond. Reflection streams hold
slots too, which is why reflection is off unless ``XNLI_SERVE_GRPC_REFLECTION`` turns it on.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from app.grpc.proto import open_inference_pb2 as pb
from app.service import health
from app.service.engine_handle import EngineHandle

INFERENCE_SERVICE: str = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVICES = ("", INFERENCE_SERVICE)  # "": the server as a whole
FOLLOW_INTERVAL_S = 0.25  # how often the state Watch streams report is brought in step with the engine
MAX_WATCHERS = 16  # Watch streams open at once per process

SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING


def serving_status(engine: EngineHandle) -> int:
    """SERVING or NOT_SERVING (a ``HealthCheckResponse.ServingStatus``)."""
    return SERVING if health.readiness(engine).ready else NOT_SERVING


class EngineHealth(health_aio.HealthServicer):
    """grpc.health.v1 answered from the engine's readiness: ``Check`` reads it at each call; ``Watch`` streams what
    :meth:`follow` last saw (it has no event to await: readiness is polled, every ``FOLLOW_INTERVAL_S``)."""

    def __init__(self, engine: EngineHandle, max_watchers: int = MAX_WATCHERS) -> None:
        super().__init__()
        self.engine = engine
        self.max_watchers = max_watchers
        self.watchers = 0
        self.stopped = False
        self._shown: int | None = None

    def status(self) -> int:
        return NOT_SERVING if self.stopped else serving_status(self.engine)

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in SERVICES:
            known = ", ".join(repr(name) for name in SERVICES)
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}; known: {known}")
        return health_pb2.HealthCheckResponse(status=self.status())

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if self.watchers >= self.max_watchers:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this process serves at most {self.max_watchers} health Watch streams at once; use Check, or retry",
            )
        self.watchers += 1
        try:
            await self.show(self.status())  # a stream opened before the first poll starts from the truth
            await super().Watch(request, context)
        finally:
            self.watchers -= 1

    async def show(self, status: int) -> None:
        """Tell the Watch streams, when it changed."""
        if status != self._shown:
            self._shown = status
            for service in SERVICES:
                await self.set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        self.stopped = True
        await super().enter_graceful_shutdown()

    async def follow(self) -> None:
        """Keep what Watch streams see in step with the engine, until cancelled."""
        while True:
            await self.show(self.status())
            await asyncio.sleep(FOLLOW_INTERVAL_S)


class HealthService:
    """The health servicer on a server, and the task that keeps its Watch streams in step."""

    def __init__(self, engine: EngineHandle, server: grpc.aio.Server, *, with_reflection: bool) -> None:
        self.servicer = EngineHealth(engine)
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        if with_reflection:
            names = (INFERENCE_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
            reflection.enable_server_reflection((*names, reflection.SERVICE_NAME), server)
        self._following: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._following = asyncio.ensure_future(self.servicer.follow())

    async def stop(self) -> None:
        """NOT_SERVING for good (Watch streams hear it before the server closes them)."""
        following, self._following = self._following, None
        if following is not None:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        await self.servicer.enter_graceful_shutdown()
