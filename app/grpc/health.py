"""The standard gRPC health service (``grpc.health.v1.Health``) beside the Open Inference Protocol, and server
reflection when asked for.

Kubernetes' ``grpc:`` probes, ``grpc_health_probe``, Envoy and most gRPC load balancers ask ``grpc.health.v1``, not the
Open Inference Protocol's ``ServerReady``; both answer from the same readiness as ``/health/ready`` (every enabled
variant loaded and warmed up, the workers live, no drain begun). Two service names are known: ``""`` (the server) and
``inference.GRPCInferenceService``; any other is NOT_FOUND (``Check``) or SERVICE_UNKNOWN (``Watch``), as the
protocol says.

Neither health nor reflection asks for an API key: probes carry none, and what they reveal (ready or not; the
service's schema, published in ``app/grpc/proto``) is no secret. Neither counts against the inference calls' limit
(``XNLI_SERVE_MAX_INFLIGHT_REQUESTS``, kept by the servicer), so a probe is answered under full load. Each ``Watch``
stream stays open for as long as its client likes, and the server bounds all calls at once (``app.grpc.server``):
at most ``MAX_WATCHERS`` streams, RESOURCE_EXHAUSTED beyond, so that clients without a key cannot take that bound.
Reflection streams are not capped that way, which is why reflection is off unless ``XNLI_SERVE_GRPC_REFLECTION``
turns it on.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from app.grpc.proto import open_inference_pb2 as pb
from app.service import health
from app.service.engine_handle import EngineHandle

INFERENCE_SERVICE: str = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVICES = ("", INFERENCE_SERVICE)  # "": the server as a whole
WATCH_INTERVAL_S = 0.25  # how often a Watch stream looks at the engine's readiness (it has no event to await)
MAX_WATCHERS = 64  # Watch streams open at once per process (client-side health checking opens one per channel)

SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: int = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
_MESSAGES: Any = health_pb2  # its List messages are newer than the typing stubs


def serving_status(engine: EngineHandle) -> int:
    """SERVING or NOT_SERVING (a ``HealthCheckResponse.ServingStatus``)."""
    return SERVING if health.readiness(engine).ready else NOT_SERVING


class EngineHealth(health_pb2_grpc.HealthServicer):
    """grpc.health.v1 answered from the engine's readiness at each look. :meth:`stop` makes it NOT_SERVING for good;
    a Watch stream then sends that and ends, so open streams do not hold the server's stop for its whole grace."""

    def __init__(self, engine: EngineHandle, max_watchers: int = MAX_WATCHERS) -> None:
        self.engine = engine
        self.max_watchers = max_watchers
        self.watchers = 0
        self.stopped = False
        self._stopping = asyncio.Event()

    def status(self, service: str = "") -> int:
        if service not in SERVICES:
            return SERVICE_UNKNOWN
        return NOT_SERVING if self.stopped else serving_status(self.engine)

    def stop(self) -> None:
        self.stopped = True
        self._stopping.set()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in SERVICES:
            known = ", ".join(repr(name) for name in SERVICES)
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}; known: {known}")
        return health_pb2.HealthCheckResponse(status=self.status(request.service))

    async def List(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        statuses = {name: health_pb2.HealthCheckResponse(status=self.status(name)) for name in SERVICES}
        return _MESSAGES.HealthListResponse(statuses=statuses)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """The status now, then each change; an unknown service is SERVICE_UNKNOWN (and stays so), as the protocol
        says, instead of an error."""
        if self.watchers >= self.max_watchers:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this process serves at most {self.max_watchers} health Watch streams at once; use Check, or retry",
            )
        self.watchers += 1
        try:
            sent: int | None = None
            while True:
                status = self.status(request.service)
                if status != sent:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    sent = status
                if self.stopped:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), WATCH_INTERVAL_S)
        finally:
            self.watchers -= 1


def add_health_service(engine: EngineHandle, server: grpc.aio.Server, *, with_reflection: bool) -> EngineHealth:
    """grpc.health.v1 on ``server`` (and reflection over every service it serves, when asked for)."""
    servicer = EngineHealth(engine)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if with_reflection:
        reflection.enable_server_reflection((INFERENCE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
    return servicer
