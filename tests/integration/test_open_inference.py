"""Open Inference Protocol (KServe v2) endpoints, driven by tritonclient: an independent client implementation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.support.helpers import ServerProcess, metric_value, running_server, write_catalogue

pytestmark = pytest.mark.integration

PAIRS = [
    ("Meine Großmutter backt jeden Sonntag einen Kuchen.", "Die Großmutter backt nie."),
    ("افتتحت البلدية حديقة جديدة بجانب المدرسة.", "هناك حديقة قرب المدرسة."),
    ("这家书店每天晚上十点关门。", "书店晚上营业。"),
    ("Mvua inanyesha.", "Ardhi ni kavu."),
]
LABELS = ["entailment", "neutral", "contradiction"]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    connection = triton.InferenceServerClient(server.base_url.removeprefix("http://"))
    yield connection
    connection.close()


def tensors(pairs: list[tuple[str, str]]) -> list[triton.InferInput]:
    inputs = []
    for position, name in enumerate(("premise", "hypothesis")):
        tensor = triton.InferInput(name, [len(pairs)], "BYTES")
        tensor.set_data_from_numpy(np.array([pair[position] for pair in pairs], dtype=object), binary_data=False)
        inputs.append(tensor)
    return inputs


def test_server_metadata_and_health(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "xnli-serve"
    assert metadata["version"]


@pytest.mark.parametrize("version", ["", "1"])
def test_model_metadata_and_readiness(client: triton.InferenceServerClient, version: str) -> None:
    assert client.is_model_ready("xlmr-hellaswag-mnli", version)
    metadata = client.get_model_metadata("xlmr-hellaswag-mnli", version)
    assert metadata["name"] == "xlmr-hellaswag-mnli"
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [
        {"name": "premise", "datatype": "BYTES", "shape": [-1]},
        {"name": "hypothesis", "datatype": "BYTES", "shape": [-1]},
    ]
    label, probabilities = metadata["outputs"]
    assert (label["name"], label["datatype"], label["shape"]) == ("label", "BYTES", [-1])
    assert (probabilities["name"], probabilities["datatype"], probabilities["shape"]) == (
        "probabilities",
        "FP32",
        [-1, 3],
    )
    assert probabilities["parameters"]["label_order"] == ",".join(LABELS)
    assert metadata["parameters"]["intermediate_task"] == "hellaswag"
    assert metadata["parameters"]["untrained_demo"] is True


@pytest.mark.parametrize("variant", ["xlmr-mnli", "xlmr-hellaswag-mnli"])
@pytest.mark.parametrize("version", ["", "1"])
def test_infer_equals_native_predict(
    server: ServerProcess, client: triton.InferenceServerClient, variant: str, version: str
) -> None:
    outputs = [triton.InferRequestedOutput(name, binary_data=False) for name in ("label", "probabilities")]
    result = client.infer(variant, tensors(PAIRS), model_version=version, request_id="req-7", outputs=outputs)
    response = result.get_response()
    assert response["model_name"] == variant
    assert response["model_version"] == "1"
    assert response["id"] == "req-7"
    probabilities = result.as_numpy("probabilities")
    labels = [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("label")]
    assert probabilities.shape == (len(PAIRS), 3)
    native = httpx.post(
        f"{server.base_url}/predict",
        json={"inputs": [{"premise": p, "hypothesis": h} for p, h in PAIRS], "variant": variant},
    ).json()["predictions"]
    for row, label, expected in zip(probabilities, labels, native, strict=True):
        np.testing.assert_allclose(row, [expected["scores"][name] for name in LABELS], atol=1e-6)
        assert label == expected["label"]


def test_output_selection_and_default_outputs(client: triton.InferenceServerClient) -> None:
    only_labels = client.infer(
        "xlmr-mnli", tensors(PAIRS[:2]), outputs=[triton.InferRequestedOutput("label", binary_data=False)]
    )
    assert [output["name"] for output in only_labels.get_response()["outputs"]] == ["label"]
    everything = client.infer("xlmr-mnli", tensors(PAIRS[:2]))  # no outputs named: all of them, as binary data
    assert {output["name"] for output in everything.get_response()["outputs"]} == {"label", "probabilities"}
    assert everything.as_numpy("probabilities").shape == (2, 3)


def post_infer(server: ServerProcess, body: dict[str, Any], model: str = "xlmr-mnli") -> httpx.Response:
    return httpx.post(f"{server.base_url}/v2/models/{model}/infer", json=body)


def byte_tensor(
    name: str, values: list[Any], shape: list[int] | None = None, datatype: str = "BYTES"
) -> dict[str, Any]:
    return {"name": name, "shape": shape or [len(values)], "datatype": datatype, "data": values}


GOOD = [byte_tensor("premise", ["Il pleut."]), byte_tensor("hypothesis", ["Le sol est mouillé."])]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        pytest.param(
            {"inputs": [byte_tensor("premise", [1.5], datatype="FP32"), GOOD[1]]}, 400, "datatype FP32", id="datatype"
        ),
        pytest.param(
            {"inputs": [byte_tensor("premise", ["a", "b"], shape=[3]), byte_tensor("hypothesis", ["x", "y", "z"])]},
            400,
            "has shape [3] but 2 rows",
            id="shape",
        ),
        pytest.param(
            {"inputs": [byte_tensor("premise", ["a", "b"]), GOOD[1]]},
            400,
            "premise has shape [2] but hypothesis has shape [1]",
            id="mismatch",
        ),
        pytest.param({"inputs": [GOOD[0]]}, 400, "missing input 'hypothesis'", id="missing-input"),
        pytest.param({"inputs": [GOOD[0], byte_tensor("context", ["x"])]}, 400, "unexpected input", id="extra-input"),
        pytest.param({"inputs": [*GOOD, byte_tensor("context", ["x"])]}, 400, "at most 2 items", id="three-inputs"),
        pytest.param({"inputs": [GOOD[0], byte_tensor("hypothesis", [" "])]}, 400, "is empty", id="blank"),
        pytest.param({"inputs": GOOD, "outputs": [{"name": "logits"}]}, 400, "unknown output 'logits'", id="output"),
        pytest.param({"inputs": GOOD, "parameters": {"truncate": "yes"}}, 400, "'truncate'", id="parameter"),
        pytest.param({"inputs": "nope"}, 400, "invalid inference request", id="not-a-list"),
    ],
)
def test_protocol_errors(server: ServerProcess, body: dict[str, Any], status: int, fragment: str) -> None:
    response = post_infer(server, body)
    assert response.status_code == status
    error = response.json()
    assert set(error) == {"error"}
    assert fragment in error["error"]


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/v2/models/ghost/infer", "unknown variant 'ghost'"),
        ("/v2/models/xlmr-mnli/versions/2/infer", "no version '2'"),
    ],
)
def test_unknown_model_or_version_is_404(server: ServerProcess, path: str, fragment: str) -> None:
    response = httpx.post(f"{server.base_url}{path}", json={"inputs": GOOD})
    assert response.status_code == 404
    assert fragment in response.json()["error"]


def test_nested_data_and_column_shape_are_accepted(server: ServerProcess) -> None:
    body = {
        "inputs": [
            byte_tensor("premise", [["Il pleut."], ["Kedi süt içti."]], shape=[2, 1]),
            byte_tensor("hypothesis", [["Le sol est mouillé."], ["Bir hayvan bir şey içti."]], shape=[2, 1]),
        ]
    }
    response = post_infer(server, body)
    assert response.status_code == 200
    outputs = {output["name"]: output for output in response.json()["outputs"]}
    assert outputs["probabilities"]["shape"] == [2, 3]
    assert len(outputs["probabilities"]["data"]) == 6


def test_tritonclient_surfaces_errors(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="unknown variant 'ghost'"):
        client.get_model_metadata("ghost")
    assert not client.is_model_ready("ghost")


def test_v2_and_native_requests_share_one_batch(demo_store: Path, tmp_path: Path) -> None:
    catalogue = write_catalogue(
        tmp_path / "variants.toml", demo_store, [{"name": "gated", "faults": {"delay_ms": 300}}]
    )
    with running_server(catalogue, tmp_path, extra_env={"XNLI_SERVE_ENABLE_FAULT_INJECTION": "true"}) as server:
        assert httpx.post(f"{server.base_url}/predict", json={"premise": "a", "hypothesis": "b"}).status_code == 200
        before = httpx.get(f"{server.base_url}/metrics").text

        async def run() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
                blocker = asyncio.ensure_future(http.post("/predict", json={"premise": "a b", "hypothesis": "c d"}))
                await asyncio.sleep(0.15)  # the blocker's batch is running; the next two wait together
                native = asyncio.ensure_future(
                    http.post("/predict", json={"premise": PAIRS[0][0], "hypothesis": PAIRS[0][1]})
                )
                v2 = asyncio.ensure_future(http.post("/v2/models/gated/infer", json={"inputs": GOOD}))
                return list(await asyncio.gather(blocker, native, v2))

        responses = asyncio.run(run())
        assert [response.status_code for response in responses] == [200, 200, 200]
        after = httpx.get(f"{server.base_url}/metrics").text

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("xnli_batch_size_count", variant="gated") == 2  # the blocker's batch, then one shared batch
    assert delta("xnli_batch_size_sum", variant="gated") == 3
    assert delta("xnli_request_duration_seconds_count", variant="gated", endpoint="v2_infer") == 1
    assert delta("xnli_request_duration_seconds_count", variant="gated", endpoint="predict") == 2
