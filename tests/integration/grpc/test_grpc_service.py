"""The Open Inference Protocol over gRPC against a real server, driven by tritonclient.grpc on its defaults (raw
input contents, raw outputs): answers equal HTTP's, metadata, readiness, the model repository under traffic, keys,
unknown models, too many pairs, the deadline and a client that cancels. One server for the module, behind a key
(every call sends ``authorization`` metadata, as every HTTP call sends the header)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from app.grpc.health import SERVING
from tests.support.helpers import ServerProcess, metric_value, running_server, write_catalogue

pytestmark = pytest.mark.integration

API_KEY = "grpc-integration-key-0123"
HEADERS = {"authorization": f"Bearer {API_KEY}"}
SLOW_BATCH_MS = 400  # the `slow` variant's injected delay per batch: long enough to cancel a call or miss a deadline

# Written for these tests: one pair per script.
SCRIPTS = {
    "latin": ("Die Katze schläft auf dem warmen Sofa.", "Ein Tier ruht sich aus."),
    "cyrillic": ("Мальчик пьёт горячий чай на кухне.", "Ребёнок пьёт напиток."),
    "arabic": ("يقرأ الطالب كتابا في المكتبة.", "الطالب يلعب كرة القدم."),
    "devanagari": ("बच्चे पार्क में खेल रहे हैं।", "बच्चे बाहर हैं।"),
    "han": ("她每天早上骑自行车去上班。", "她有一辆自行车。"),
}


@dataclass
class Served:
    server: ServerProcess
    client: triton.InferenceServerClient
    http: httpx.Client


@pytest.fixture(scope="module")
def served(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("grpc")
    catalogue = write_catalogue(
        folder / "variants.toml",
        demo_store,
        [
            {"name": "xlmr-mnli"},
            {"name": "xlmr-squad-mnli", "checkpoint": "xlmr-squad-mnli"},
            {"name": "slow", "checkpoint": "xlmr-hellaswag-mnli", "faults": {"delay_ms": SLOW_BATCH_MS}},
        ],
        max_batch_size=8,
        max_seq_len=128,
    )
    env = {"XNLI_SERVE_API_KEYS": API_KEY, "XNLI_SERVE_ENABLE_FAULT_INJECTION": "true"}
    with running_server(catalogue, folder, extra_env=env) as server:
        assert server.grpc_target is not None
        client = triton.InferenceServerClient(server.grpc_target)
        with httpx.Client(base_url=server.base_url, headers=HEADERS, timeout=30) as http:
            yield Served(server, client, http)
        client.close()


def tensors(pairs: list[tuple[str, str]]) -> list[triton.InferInput]:
    """``premise`` and ``hypothesis`` as tritonclient.grpc builds them by default (raw_input_contents)."""
    inputs = []
    for position, name in enumerate(("premise", "hypothesis")):
        tensor = triton.InferInput(name, [len(pairs)], "BYTES")
        tensor.set_data_from_numpy(np.array([pair[position] for pair in pairs], dtype=object))
        inputs.append(tensor)
    return inputs


def http_infer(http: httpx.Client, model: str, pairs: list[tuple[str, str]]) -> dict[str, list[object]]:
    body = {
        "inputs": [
            {"name": name, "datatype": "BYTES", "shape": [len(pairs)], "data": [pair[index] for pair in pairs]}
            for index, name in enumerate(("premise", "hypothesis"))
        ]
    }
    response = http.post(f"/v2/models/{model}/infer", json=body)
    assert response.status_code == 200, response.text
    return {output["name"]: output["data"] for output in response.json()["outputs"]}


def ignore(result: object, error: object) -> None:
    """An async_infer callback for a call whose answer the test does not read."""


def refusal(call: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as refused:
        call()  # type: ignore[operator]
    return refused.value


@pytest.mark.parametrize("count", [1, 64])
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_infer_equals_http(served: Served, script: str, count: int) -> None:
    premise, hypothesis = SCRIPTS[script]
    pairs = [(f"{premise} ({index})" if index else premise, hypothesis) for index in range(count)]
    result = served.client.infer("xlmr-mnli", tensors(pairs), headers=HEADERS)
    expected = http_infer(served.http, "xlmr-mnli", pairs)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (count, 3)
    np.testing.assert_allclose(probabilities.reshape(-1), np.array(expected["probabilities"]), rtol=0, atol=1e-6)
    assert [label.decode() for label in result.as_numpy("label")] == expected["label"]
    response = result.get_response()
    assert response.model_name == "xlmr-mnli"
    assert response.parameters["label_order"].string_param == "entailment,neutral,contradiction"


def test_metadata_matches_http(served: Served) -> None:
    server = served.client.get_server_metadata(headers=HEADERS)
    assert (server.name, list(server.extensions)) == ("xnli-serve", ["model_repository"])
    model = served.client.get_model_metadata("xlmr-mnli", headers=HEADERS)
    expected = served.http.get("/v2/models/xlmr-mnli").json()
    assert (model.name, list(model.versions), model.platform) == (
        expected["name"],
        expected["versions"],
        expected["platform"],
    )
    for ours, theirs in ((model.inputs, expected["inputs"]), (model.outputs, expected["outputs"])):
        assert [(tensor.name, tensor.datatype, list(tensor.shape)) for tensor in ours] == [
            (tensor["name"], tensor["datatype"], tensor["shape"]) for tensor in theirs
        ]


def test_readiness_matches_http(served: Served) -> None:
    assert served.client.is_server_live(headers=HEADERS)
    assert served.client.is_server_ready(headers=HEADERS)
    assert served.http.get("/v2/health/ready").json()["ready"]
    assert served.client.is_model_ready("xlmr-mnli", headers=HEADERS)
    assert served.client.is_model_ready("xlmr-mnli", "1", headers=HEADERS)


def test_the_standard_health_service_needs_no_key(served: Served) -> None:
    """Kubernetes' gRPC probes send no metadata: grpc.health.v1 answers them on a keyed server."""
    assert served.server.grpc_target is not None
    with grpc.insecure_channel(served.server.grpc_target) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == SERVING


@pytest.mark.parametrize(
    ("headers", "message"), [({}, "missing API key"), ({"authorization": "Bearer nope"}, "invalid API key")]
)
def test_a_wrong_key_is_unauthenticated(served: Served, headers: dict[str, str], message: str) -> None:
    for call in (
        lambda: served.client.is_server_ready(headers=headers),
        lambda: served.client.infer("xlmr-mnli", tensors([SCRIPTS["latin"]]), headers=headers),
    ):
        refused = refusal(call)
        assert refused.status() == "StatusCode.UNAUTHENTICATED"
        assert message in refused.message()


def test_an_unknown_model_is_not_found(served: Served) -> None:
    refused = refusal(lambda: served.client.infer("nope", tensors([SCRIPTS["latin"]]), headers=HEADERS))
    assert refused.status() == "StatusCode.NOT_FOUND"
    assert "xlmr-mnli" in refused.message()  # names what is served
    assert refusal(lambda: served.client.is_model_ready("nope", headers=HEADERS)).status() == "StatusCode.NOT_FOUND"


def test_too_many_pairs(served: Served) -> None:
    refused = refusal(lambda: served.client.infer("xlmr-mnli", tensors([SCRIPTS["latin"]] * 65), headers=HEADERS))
    assert refused.status() == "StatusCode.INVALID_ARGUMENT"
    assert "max_pairs_per_request=64" in refused.message()


def test_the_deadline(served: Served) -> None:
    """A call whose deadline passes while it waits behind another request's batch gets DEADLINE_EXCEEDED."""
    ahead = served.client.async_infer("slow", tensors([SCRIPTS["han"]] * 8), ignore, headers=HEADERS)
    time.sleep(0.05)  # the first batch is running
    try:
        refused = refusal(
            lambda: served.client.infer(
                "slow", tensors([SCRIPTS["han"]]), headers=HEADERS, client_timeout=SLOW_BATCH_MS * 1.5 / 1000
            )
        )
    finally:
        ahead.cancel()
    assert refused.status() == "StatusCode.DEADLINE_EXCEEDED"


def test_a_client_that_cancels_is_counted_disconnected(served: Served) -> None:
    def disconnected() -> float:
        metrics = served.http.get("/metrics").text
        return metric_value(metrics, "xnli_requests_total", variant="slow", outcome="disconnected")

    before = disconnected()
    call = served.client.async_infer("slow", tensors([SCRIPTS["arabic"]]), ignore, headers=HEADERS)
    time.sleep(SLOW_BATCH_MS / 4000)
    call.cancel()
    deadline = time.monotonic() + 5
    while disconnected() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert disconnected() == before + 1


def test_requests_are_counted_under_the_grpc_endpoint(served: Served) -> None:
    def count() -> float:
        return metric_value(
            served.http.get("/metrics").text,
            "xnli_request_duration_seconds_count",
            variant="xlmr-mnli",
            endpoint="grpc_infer",
        )

    before = count()
    served.client.infer("xlmr-mnli", tensors([SCRIPTS["devanagari"]]), headers=HEADERS)
    assert count() == before + 1


def test_repository_unload_and_load_under_traffic(served: Served) -> None:
    """Unloading and loading one variant while another takes steady traffic: not one failed call on the other."""
    client = served.client
    failures: list[str] = []
    answered = 0
    stop = threading.Event()

    def traffic() -> None:
        nonlocal answered
        other = triton.InferenceServerClient(served.server.grpc_target or "")
        while not stop.is_set():
            try:
                other.infer("xlmr-mnli", tensors([SCRIPTS["cyrillic"]] * 4), headers=HEADERS)
                answered += 1
            except InferenceServerException as error:
                failures.append(str(error))
        other.close()

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        index = {model.name: model.state for model in client.get_model_repository_index(headers=HEADERS).models}
        assert index == {"xlmr-mnli": "READY", "xlmr-squad-mnli": "READY", "slow": "READY"}
        client.unload_model("xlmr-squad-mnli", headers=HEADERS)
        gone = refusal(lambda: client.is_model_ready("xlmr-squad-mnli", headers=HEADERS))
        assert gone.status() == "StatusCode.NOT_FOUND"  # as HTTP's /v2/models/{name}/ready answers 404
        states = {model.name: model.state for model in client.get_model_repository_index(headers=HEADERS).models}
        assert states["xlmr-squad-mnli"] == "UNAVAILABLE"
        client.load_model("xlmr-squad-mnli", headers=HEADERS)
        assert client.is_model_ready("xlmr-squad-mnli", headers=HEADERS)
        client.infer("xlmr-squad-mnli", tensors([SCRIPTS["latin"]]), headers=HEADERS)
    finally:
        stop.set()
        worker.join(30)
    assert failures == []
    assert answered > 0
