"""A schema fuzz of the gRPC messages against a real server: hypothesis builds ModelInferRequest messages from the
schema (any names, datatypes, shapes, contents, raw entries, parameters of every kind, outputs) and raw bytes for
every RPC; no answer may be INTERNAL or UNKNOWN, and the server must still answer afterwards.

Bounded and seeded like the HTTP fuzz (XNLI_SERVE_FUZZ_EXAMPLES, XNLI_SERVE_FUZZ_SEED); `make test-slow` runs it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from app.grpc.proto import open_inference_pb2 as pb
from tests.support.helpers import running_server, write_catalogue

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = int(os.environ.get("XNLI_SERVE_FUZZ_EXAMPLES", "40")) * 5  # a gRPC call costs a few milliseconds
_SEED = os.environ.get("XNLI_SERVE_FUZZ_SEED", "20261126")
seeded = seed(int(_SEED)) if _SEED else (lambda test: test)  # `make fuzz` empties it: a fresh seed each run
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
METHODS = [method.name for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods]


@pytest.fixture(scope="module")
def channel(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    folder = tmp_path_factory.mktemp("grpc-fuzz")
    catalogue = write_catalogue(folder / "variants.toml", demo_store, [{"name": "xlmr-mnli"}], max_batch_size=8)
    with running_server(catalogue, folder) as server, grpc.insecure_channel(server.grpc_target or "") as opened:
        yield opened


def call(channel: grpc.Channel, method: str, payload: bytes) -> grpc.StatusCode:
    """Send ``payload`` as the request of ``method`` as it is (any bytes), return the status."""
    unary: Any = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
    try:
        unary(payload, timeout=30)
    except grpc.RpcError as error:
        failed: Any = error
        code: grpc.StatusCode = failed.code()
        return code
    return grpc.StatusCode.OK


texts = st.one_of(st.text(max_size=40), st.sampled_from(["", "premise", "hypothesis", "label", "probabilities"]))
parameters = st.dictionaries(
    st.one_of(texts, st.sampled_from(["timeout", "priority", "language", "truncate", "binary_data_output"])),
    st.one_of(
        st.builds(pb.InferParameter, bool_param=st.booleans()),
        st.builds(pb.InferParameter, int64_param=st.integers(-(2**63), 2**63 - 1)),
        st.builds(pb.InferParameter, uint64_param=st.integers(0, 2**64 - 1)),
        st.builds(pb.InferParameter, double_param=st.floats()),
        st.builds(pb.InferParameter, string_param=texts),
        st.just(pb.InferParameter()),
    ),
    max_size=4,
)
contents = st.builds(
    pb.InferTensorContents,
    bytes_contents=st.lists(st.one_of(st.binary(max_size=30), texts.map(str.encode)), max_size=6),
    fp32_contents=st.lists(st.floats(width=32), max_size=3),
    int64_contents=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
)
tensor = st.builds(
    pb.ModelInferRequest.InferInputTensor,
    name=st.one_of(st.sampled_from(["premise", "hypothesis"]), texts),
    datatype=st.sampled_from(["BYTES", "FP32", "INT64", "", "bytes"]),
    shape=st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(-2, 70), max_size=3),
    parameters=parameters,
    contents=st.one_of(st.none(), contents),
)
requests = st.builds(
    pb.ModelInferRequest,
    model_name=st.one_of(st.just("xlmr-mnli"), texts),
    model_version=st.sampled_from(["", "1", "2", "x"]),
    id=texts,
    parameters=parameters,
    inputs=st.lists(tensor, max_size=3),
    outputs=st.lists(st.builds(pb.ModelInferRequest.InferRequestedOutputTensor, name=texts), max_size=3),
    raw_input_contents=st.lists(st.binary(max_size=40), max_size=3),
)


@seeded
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests)
def test_infer_messages_never_fail_internally(channel: grpc.Channel, request: pb.ModelInferRequest) -> None:
    assert call(channel, "ModelInfer", request.SerializeToString()) not in FORBIDDEN


@seeded
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(METHODS), payload=st.binary(max_size=200))
def test_any_bytes_to_any_rpc_never_fail_internally(channel: grpc.Channel, method: str, payload: bytes) -> None:
    assert call(channel, method, payload) not in FORBIDDEN


def test_the_server_still_answers(channel: grpc.Channel) -> None:
    assert call(channel, "ServerReady", b"") is grpc.StatusCode.OK
