"""/v2 infer with the binary tensor extension, in-process: bodies built and read by tritonclient's own code (its
defaults send binary inputs and ask for binary outputs), equal to JSON answers; malformed binary bodies are 400."""

from __future__ import annotations

import struct
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from prometheus_client import REGISTRY

from app.api.binary_tensors import HEADER_LENGTH
from app.engine.engine import Engine
from tests.support.triton_support import triton_inputs
from tests.unit.api.conftest import client_for

INFER = "/v2/models/xlmr-mnli/infer"

# Written for these tests, one list per script: (premise, hypothesis).
SCRIPTS: dict[str, list[tuple[str, str]]] = {
    "latin": [
        ("Die Nachbarin gießt jeden Abend ihre Tomaten.", "Die Tomaten bekommen Wasser."),
        ("Le musée ferme ses portes le lundi.", "Le musée est ouvert tous les jours."),
    ],
    "cyrillic": [
        ("Поезд отправился точно по расписанию.", "Поезд опоздал на час."),
        ("Бабушка связала внуку тёплый шарф.", "У внука есть шарф."),
    ],
    "arabic": [
        ("يقرأ الطالب كتابا في المكتبة.", "الطالب في المكتبة."),
        ("أغلق المتجر أبوابه مبكرا اليوم.", "المتجر مفتوح طوال الليل."),
    ],
    "cjk": [
        ("我们周末去山上看了日出。", "他们周末待在家里。"),
        ("駅の前に新しいパン屋ができた。", "駅の近くでパンが買える。"),
    ],
    "devanagari": [
        ("किसान ने सुबह खेत में बीज बोए।", "खेत में बीज बोए गए।"),
        ("बच्चे पार्क में फुटबॉल खेल रहे हैं।", "पार्क खाली है।"),
    ],
}


def pairs_for(script: str, count: int) -> list[tuple[str, str]]:
    base = SCRIPTS[script]
    return [(f"{base[i % len(base)][0]} ({i})", base[i % len(base)][1]) for i in range(count)]


async def post_triton(
    client: httpx.AsyncClient, inputs: list[triton.InferInput], outputs: list[triton.InferRequestedOutput] | None = None
) -> httpx.Response:
    """POST the body tritonclient builds for ``client.infer(...)`` (same bytes, same header)."""
    body, header_length = triton.InferenceServerClient.generate_request_body(inputs, outputs=outputs)
    headers = {} if header_length is None else {HEADER_LENGTH: str(header_length)}
    return await client.post(INFER, content=body, headers=headers)


def parsed(response: httpx.Response) -> triton.InferResult:
    assert response.status_code == 200, response.text
    length = response.headers.get(HEADER_LENGTH)
    return triton.InferenceServerClient.parse_response_body(
        response.content, header_length=int(length) if length is not None else None
    )


async def json_probabilities(client: httpx.AsyncClient, pairs: list[tuple[str, str]]) -> np.ndarray:
    body = {
        "inputs": [
            {"name": "premise", "shape": [len(pairs)], "datatype": "BYTES", "data": [p for p, _ in pairs]},
            {"name": "hypothesis", "shape": [len(pairs)], "datatype": "BYTES", "data": [h for _, h in pairs]},
        ]
    }
    response = await client.post(INFER, json=body)
    assert response.status_code == 200, response.text
    assert HEADER_LENGTH not in response.headers
    outputs = {output["name"]: output for output in response.json()["outputs"]}
    return np.array(outputs["probabilities"]["data"], dtype=np.float32).reshape(len(pairs), 3)


@pytest.mark.parametrize("count", [1, 64])
@pytest.mark.parametrize("script", list(SCRIPTS))
async def test_tritonclient_defaults_equal_json(client: httpx.AsyncClient, script: str, count: int) -> None:
    pairs = pairs_for(script, count)
    response = await post_triton(client, triton_inputs(pairs))  # binary inputs, binary_data_output: true
    assert response.headers["content-type"] == "application/octet-stream"
    result = parsed(response)
    for output in result.get_response()["outputs"]:
        assert "data" not in output
        assert output["parameters"]["binary_data_size"] > 0
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (count, 3)
    expected = await json_probabilities(client, pairs)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    labels = [label.decode() for label in result.as_numpy("label")]
    assert labels == [["entailment", "neutral", "contradiction"][index] for index in expected.argmax(axis=1)]


@pytest.mark.parametrize(
    ("binary_inputs", "binary_outputs"),
    [(True, {"label": False, "probabilities": True}), (False, {"label": True, "probabilities": False})],
    ids=["binary-in-mixed-out", "json-in-mixed-out"],
)
async def test_binary_and_json_tensors_mix(
    client: httpx.AsyncClient, binary_inputs: bool, binary_outputs: dict[str, bool]
) -> None:
    pairs = pairs_for("cyrillic", 3)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name, binary in binary_outputs.items()]
    result = parsed(await post_triton(client, triton_inputs(pairs, binary_inputs), outputs))
    sent = {output["name"]: output for output in result.get_response()["outputs"]}
    for name, binary in binary_outputs.items():
        assert ("data" in sent[name]) is not binary
    np.testing.assert_allclose(result.as_numpy("probabilities"), await json_probabilities(client, pairs), atol=1e-6)


async def test_binary_requests_are_counted_like_json(client: httpx.AsyncClient) -> None:
    def count() -> float:
        value = REGISTRY.get_sample_value(
            "xnli_request_duration_seconds_count", {"variant": "xlmr-mnli", "endpoint": "v2_infer"}
        )
        return value or 0.0

    before = count()
    parsed(await post_triton(client, triton_inputs(pairs_for("arabic", 2))))
    assert count() == before + 1


async def test_server_metadata_lists_the_extensions(client: httpx.AsyncClient) -> None:
    extensions = (await client.get("/v2")).json()["extensions"]
    assert {"binary_tensor_data", "model_repository"} <= set(extensions)


def encode(*values: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(value)) + value for value in values)


def binary_request(
    premise: bytes,
    hypothesis: bytes,
    *,
    shape: int = 1,
    premise_size: Any = None,
    extra_header: dict[str, Any] | None = None,
    premise_fields: dict[str, Any] | None = None,
) -> tuple[bytes, int]:
    """A hand-made binary body: premise and hypothesis as raw bytes after the header, sizes overridable."""
    header = {
        "inputs": [
            {
                "name": "premise",
                "shape": [shape],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(premise) if premise_size is None else premise_size},
                **(premise_fields or {}),
            },
            {
                "name": "hypothesis",
                "shape": [shape],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(hypothesis)},
            },
        ],
        **(extra_header or {}),
    }
    head = orjson.dumps(header)
    return head + premise + hypothesis, len(head)


GOOD_PREMISE = encode(b"Es schneit seit dem Morgen.")
GOOD_HYPOTHESIS = encode(b"Es ist kalt.")


def malformed_cases() -> list[Any]:
    good, length = binary_request(GOOD_PREMISE, GOOD_HYPOTHESIS)
    cases = [
        ("header-not-a-number", good, "abc", "must be a byte count"),
        ("header-negative", good, "-5", "must be a byte count"),
        ("header-zero", good, "0", "is 0 but the body has"),
        ("header-past-the-body", good, str(len(good) + 1), f"is {len(good) + 1} but the body has {len(good)} bytes"),
        ("header-cuts-the-json", good, str(length - 3), "invalid inference request"),
        ("truncated-body", good[:-4], str(length), "the body is truncated"),
        ("bytes-after-the-tensors", good + b"\x00\x01", str(length), "2 bytes of binary data follow"),
    ]
    body, length = binary_request(encode(b"ok") + encode(b"extra"), GOOD_HYPOTHESIS)
    cases.append(("more-elements-than-the-shape", body, str(length), "bytes are left after its 1 elements"))
    body, length = binary_request(encode(b"one"), GOOD_HYPOTHESIS, shape=2)
    cases.append(("fewer-elements-than-the-shape", body, str(length), "ends before element 1 of 2"))
    body, length = binary_request(struct.pack("<I", 1_000_000) + b"short", GOOD_HYPOTHESIS)
    cases.append(("element-length-past-the-data", body, str(length), "element 0 declares 1000000 bytes"))
    body, length = binary_request(b"\x01\x00", GOOD_HYPOTHESIS)
    cases.append(("element-length-cut", body, str(length), "ends before element 0 of 1"))
    body, length = binary_request(encode(b"\xff\xfe"), GOOD_HYPOTHESIS)
    cases.append(("not-utf8", body, str(length), "element 0 is not valid UTF-8"))
    body, length = binary_request(encode(b"   "), GOOD_HYPOTHESIS)
    cases.append(("blank-element", body, str(length), "element 0 is empty"))
    for name, size in (("negative", -1), ("boolean", True), ("text", "12"), ("fraction", 1.5)):
        body, length = binary_request(GOOD_PREMISE, GOOD_HYPOTHESIS, premise_size=size)
        cases.append((f"size-{name}", body, str(length), "binary_data_size must be a non-negative integer"))
    body, length = binary_request(GOOD_PREMISE, GOOD_HYPOTHESIS, premise_fields={"data": ["x"]})
    cases.append(("data-and-binary", body, str(length), "has both data and a binary_data_size"))
    body, length = binary_request(GOOD_PREMISE, GOOD_HYPOTHESIS, premise_fields={"datatype": "FP32"})
    cases.append(("fp32-premise", body, str(length), "datatype FP32; expected BYTES"))
    body, length = binary_request(
        GOOD_PREMISE, GOOD_HYPOTHESIS, extra_header={"parameters": {"binary_data_output": "yes"}}
    )
    cases.append(("binary-output-flag", body, str(length), "'binary_data_output' must be a boolean"))
    body, length = binary_request(
        GOOD_PREMISE, GOOD_HYPOTHESIS, extra_header={"outputs": [{"name": "label", "parameters": {"binary_data": 1}}]}
    )
    cases.append(("output-binary-flag", body, str(length), "'binary_data' must be a boolean"))
    return [pytest.param(body, header, message, id=case) for case, body, header, message in cases]


@pytest.mark.parametrize(("body", "header", "message"), malformed_cases())
async def test_malformed_binary_bodies_are_400(
    client: httpx.AsyncClient, body: bytes, header: str, message: str
) -> None:
    response = await client.post(INFER, content=body, headers={HEADER_LENGTH: header})
    assert response.status_code == 400, response.text
    error = response.json()
    assert set(error) == {"error"}
    assert message in error["error"]


async def test_element_counts_are_checked_before_the_binary_data_is_read(client: httpx.AsyncClient) -> None:
    body, length = binary_request(GOOD_PREMISE, GOOD_HYPOTHESIS, shape=100_000)
    response = await client.post(INFER, content=body, headers={HEADER_LENGTH: str(length)})
    assert response.status_code == 413
    assert "the limit is max_pairs_per_request=64" in response.json()["error"]


async def test_the_body_limit_applies_to_binary_bodies(engine: Engine) -> None:
    pairs = pairs_for("latin", 64)
    async with client_for(engine, max_body_bytes=4096) as small:
        body, header_length = triton.InferenceServerClient.generate_request_body(triton_inputs(pairs))
        assert len(body) > 4096
        response = await small.post(INFER, content=body, headers={HEADER_LENGTH: str(header_length)})
        assert response.status_code == 413
        assert response.json() == {"error": "request body over 4096 bytes"}  # the protocol's shape, from middleware
