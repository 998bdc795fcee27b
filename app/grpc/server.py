"""The gRPC server's life, run beside uvicorn in the same process and event loop (``app.api.server``): started before
the HTTP port opens, and stopped with it.

* One process: it binds ``XNLI_SERVE_HOST:XNLI_SERVE_GRPC_PORT`` alone (no SO_REUSEPORT), so a port already taken
  stops the start like a taken HTTP port.
* Several front ends (``app.multiprocess``): each binds the same port with SO_REUSEPORT and the kernel spreads new
  connections over them, as the shared HTTP socket does (gRPC's listener is its own: it cannot take a socket from
  the supervisor).
* Drain (SIGTERM): new ModelInfer calls are refused UNAVAILABLE by the engine's gate (``draining``, retry in 1 s) and
  readiness answers false, while accepted calls finish; then the server stops with a grace period for answers on
  their way out, and closes its connections (clients see UNAVAILABLE and reconnect elsewhere).
* Beside the Open Inference Protocol: the standard health service (grpc.health.v1, for Kubernetes' gRPC probes and
  load balancers) and, if ``XNLI_SERVE_GRPC_REFLECTION`` asks, server reflection (``app.grpc.health``). Health turns
  NOT_SERVING as the drain begins, and for good once the server stops.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc

from app.grpc.health import MAX_WATCHERS, EngineHealth, add_health_service
from app.grpc.service import InferenceServicer, rpc_handlers
from app.service.auth import ApiKeys
from app.service.engine_handle import EngineHandle
from app.service.prediction import PredictionService
from app.settings import Settings

log = logging.getLogger(__name__)

PROBE_ROOM = 32  # RPCs at once beyond the servicer's call limit and the Watch streams: health checks and probes


class GrpcBindError(RuntimeError):
    """The gRPC port could not be bound (taken, or a bad address)."""


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcServer:
    """A ``grpc.aio`` server of :class:`InferenceServicer`; :meth:`start` and :meth:`stop` run in the serving loop."""

    def __init__(
        self,
        servicer: InferenceServicer,
        host: str,
        port: int,
        *,
        max_message_bytes: int,
        reuse_port: bool,
        with_reflection: bool = False,
    ) -> None:
        self.servicer = servicer
        self.with_reflection = with_reflection
        self.address = address(host, port)
        self.max_message_bytes = max_message_bytes
        self.reuse_port = reuse_port
        self.port: int | None = None  # bound, once started
        self._server: grpc.aio.Server | None = None
        self.health: EngineHealth | None = None

    async def start(self) -> int:
        calls = self.servicer.max_calls
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1 if self.reuse_port else 0),
                # The same bound as HTTP bodies (XNLI_SERVE_MAX_BODY_BYTES): larger messages get RESOURCE_EXHAUSTED.
                ("grpc.max_receive_message_length", self.max_message_bytes),
            ],
            # A backstop over every RPC; the servicer itself bounds its calls (XNLI_SERVE_MAX_INFLIGHT_REQUESTS, as
            # HTTP's), so that health checks, probes and Watch streams always find room under full load.
            maximum_concurrent_rpcs=None if calls is None else calls + MAX_WATCHERS + PROBE_ROOM,
        )
        server.add_generic_rpc_handlers((rpc_handlers(self.servicer),))
        self.health = add_health_service(self.servicer.engine, server, with_reflection=self.with_reflection)
        try:
            port = server.add_insecure_port(self.address)
        except RuntimeError as error:  # grpcio raises when it cannot bind
            raise GrpcBindError(f"cannot serve gRPC on {self.address}: {error}") from None
        if port == 0:  # older grpcio: 0 instead of raising
            raise GrpcBindError(f"cannot serve gRPC on {self.address}")
        await server.start()
        self._server, self.port = server, port
        log.info("gRPC (Open Inference Protocol) on %s", self.address)
        return port

    async def stop(self, grace_s: float | None) -> None:
        """Refuse new calls, let those running finish within ``grace_s`` (None: cancel them), close connections."""
        server, self._server = self._server, None
        if server is not None:
            if self.health is not None:
                self.health.stop()  # NOT_SERVING for good; its Watch streams send that and end
            await server.stop(grace_s)


def grpc_server(
    settings: Settings,
    engine: EngineHandle,
    service: PredictionService,
    api_keys: Sequence[str],
    *,
    reuse_port: bool,
) -> GrpcServer | None:
    """The process's gRPC server as the settings ask (None when XNLI_SERVE_GRPC_ENABLED is false)."""
    if not settings.grpc_enabled:
        return None
    servicer = InferenceServicer(
        engine,
        service,
        settings.max_pairs_per_request,
        ApiKeys(api_keys) if api_keys else None,
        max_calls=settings.max_inflight_requests,
    )
    return GrpcServer(
        servicer,
        settings.host,
        settings.grpc_port,
        max_message_bytes=settings.max_body_bytes,
        reuse_port=reuse_port,
        with_reflection=settings.grpc_reflection,
    )
