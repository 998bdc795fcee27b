"""A front-end process: the FastAPI app (HTTP, validation, routing, request metrics) and tokenization around an
:class:`EngineClient`, on the listening socket the supervisor bound and shares with the other front ends.

Run by the supervisor as ``python -m app.multiprocess.front_end RUN_DIR FD``, with ``PROMETHEUS_MULTIPROC_DIR`` set.
SIGTERM drains as one process does: readiness 503 and new requests 503 at once (each response closing its
connection), accepted requests finish (their engine keeps answering: the supervisor stops it only after every front
end has exited), then the process stops accepting, answers what reached it, and exits 0. The connections still queued
on the shared socket are the supervisor's to answer.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from types import FrameType

import uvicorn

from app.api.app import create_app
from app.api.server import DrainingServer, server_config, start_tracing
from app.engine.models.catalogue import load_catalogue
from app.grpc.server import GrpcServer, grpc_server
from app.multiprocess.engine_client import EngineClient
from app.multiprocess.service_metrics import serve_service_metrics
from app.multiprocess.supervisor import exit_now
from app.settings import Settings


class FrontServer(DrainingServer):
    def __init__(
        self, config: uvicorn.Config, client: EngineClient, drain_timeout_s: float, grpc: GrpcServer | None = None
    ) -> None:
        # The supervisor holds the listening socket after every front end has gone, and answers what is queued.
        super().__init__(config, client, drain_timeout_s, last_holder=False, grpc=grpc)
        self.client = client

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.client.stop_waiting()
        super().handle_exit(sig, frame)


def engine_client(settings: Settings, run_dir: Path) -> EngineClient:
    """The front end's stand-in for the engine, bounded by the same settings as the engine's own tokenization."""
    return EngineClient(
        load_catalogue(settings.catalogue, settings.variants),
        run_dir,
        settings.request_timeout_s,
        settings.traffic_seed,
        tokenization_workers=settings.tokenization_workers,
        max_tokenizing_pairs=settings.max_tokenizing_pairs,
        max_tokenizing_chars=settings.max_tokenizing_chars,
        engine_silence_s=settings.engine_silence_s,
    )


def main() -> None:
    run_dir, fd = Path(sys.argv[1]), int(sys.argv[2])
    settings = Settings()
    from app.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    client = engine_client(settings, run_dir)
    serve_service_metrics(client.engine_metrics, Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
    start_tracing("front-end")  # tracing (issue #27): before the app is built, which adds its middleware if on
    # The engine client stands in for the engine: it satisfies EngineHandle, what the API layer uses of one.
    keys = settings.load_api_keys()
    app = create_app(settings, client, keys)
    config = server_config(app, settings)  # host and port unused: it serves on the supervisor's socket
    listener = socket.socket(fileno=fd)
    # gRPC (issue #26): every front end serves it too, each binding the port with SO_REUSEPORT.
    grpc = grpc_server(settings, client, app.state.service, keys, reuse_port=True)
    FrontServer(config, client, settings.drain_timeout_s, grpc).run(sockets=[listener])
    exit_now(0)


if __name__ == "__main__":
    main()
