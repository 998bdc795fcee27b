"""gRPC through a process's life: a SIGTERM drain (accepted calls finish, new ones get UNAVAILABLE with retry
information, readiness false, exit 0) and several front-end processes, each serving gRPC on the shared port."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc

from app.grpc.health import NOT_SERVING
from app.grpc.proto import open_inference_pb2 as pb
from tests.support.helpers import running_server, write_catalogue

# Long end-to-end runs (servers started, drained and stopped): make test-slow.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLOW_BATCH_MS = 1500
PAIR = ("Der Zug fährt um sieben Uhr ab.", "Der Zug fährt am Abend.")  # written for these tests


def tensors(count: int) -> list[triton.InferInput]:
    inputs = []
    for position, name in enumerate(("premise", "hypothesis")):
        tensor = triton.InferInput(name, [count], "BYTES")
        tensor.set_data_from_numpy(np.array([PAIR[position]] * count, dtype=object))
        inputs.append(tensor)
    return inputs


def rpc(channel: grpc.Channel, method: str, reply: Any) -> Any:
    """One RPC of the service, called with the serialized request (the project generates no grpcio stubs)."""
    return channel.unary_unary(f"/inference.GRPCInferenceService/{method}", response_deserializer=reply.FromString)


def message(model: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    for position, name in enumerate(("premise", "hypothesis")):
        request.inputs.add(name=name, datatype="BYTES", shape=[1]).contents.bytes_contents.append(
            PAIR[position].encode()
        )
    return request


def test_drain_finishes_accepted_calls_and_refuses_new_ones(demo_store: Path, tmp_path: Path) -> None:
    catalogue = write_catalogue(
        tmp_path / "variants.toml",
        demo_store,
        [
            {"name": "xlmr-mnli"},
            {"name": "slow", "checkpoint": "xlmr-squad-mnli", "faults": {"delay_ms": SLOW_BATCH_MS}},
        ],
        max_batch_size=8,
        max_seq_len=128,
    )
    env = {"XNLI_SERVE_ENABLE_FAULT_INJECTION": "true", "XNLI_SERVE_DRAIN_TIMEOUT_S": "20"}
    with running_server(catalogue, tmp_path, extra_env=env) as server:
        assert server.grpc_target is not None
        client = triton.InferenceServerClient(server.grpc_target)
        accepted: list[object] = []
        done = threading.Event()

        def answered(result: object, error: object) -> None:
            accepted.append(error if error is not None else result.as_numpy("label").tolist())  # type: ignore[attr-defined]
            done.set()

        client.async_infer("slow", tensors(4), answered)
        time.sleep(0.3)  # accepted, its batch running
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with grpc.insecure_channel(server.grpc_target) as channel:
            infer = rpc(channel, "ModelInfer", pb.ModelInferResponse)
            with pytest.raises(grpc.RpcError) as refused:
                infer(message("xlmr-mnli").SerializeToString(), timeout=5)
            error: Any = refused.value
            assert error.code() is grpc.StatusCode.UNAVAILABLE
            trailing = dict(error.trailing_metadata())
            assert trailing["xnli-error-type"] == "draining"
            assert trailing["retry-after"] == "1"
            ready = rpc(channel, "ServerReady", pb.ServerReadyResponse)
            assert not ready(pb.ServerReadyRequest().SerializeToString(), timeout=5).ready
            standard: Any = health_pb2_grpc.HealthStub(channel)
            assert standard.Check(health_pb2.HealthCheckRequest(), timeout=5).status == NOT_SERVING
        assert done.wait(10)
        assert len(accepted[0]) == 4  # type: ignore[arg-type]
        assert server.process.wait(30) == 0
        client.close()


def test_every_front_end_serves_grpc(demo_store: Path, tmp_path: Path) -> None:
    catalogue = write_catalogue(tmp_path / "variants.toml", demo_store, [{"name": "xlmr-mnli"}], max_batch_size=8)
    env = {"XNLI_SERVE_FRONTEND_PROCESSES": "2", "XNLI_SERVE_LOG_FORMAT": "text"}
    with running_server(catalogue, tmp_path, extra_env=env) as server:
        assert server.grpc_target is not None
        deadline = time.monotonic() + 30
        while server.logs().count("gRPC (Open Inference Protocol) on") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.logs().count("gRPC (Open Inference Protocol) on") == 2  # both bound the port (SO_REUSEPORT)
        for _ in range(8):  # fresh connections: the kernel spreads them over the front ends
            client = triton.InferenceServerClient(server.grpc_target)
            assert client.is_server_ready()
            assert client.infer("xlmr-mnli", tensors(2)).as_numpy("probabilities").shape == (2, 3)
            client.close()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0
