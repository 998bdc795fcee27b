"""/v2 infer: responses bounded by the request, sizes checked before per-element work, parameters validated."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest

from app.api.routes.open_inference import MAX_TIMEOUT_US

INFER = "/v2/models/xlmr-mnli/infer"


def body(count: int, **extra: Any) -> dict[str, Any]:
    premises = [f"Satz Nummer {index} handelt vom Wetter." for index in range(count)]
    return {
        "inputs": [
            {"name": "premise", "shape": [count], "datatype": "BYTES", "data": premises},
            {"name": "hypothesis", "shape": [count], "datatype": "BYTES", "data": ["Es regnet."] * count},
        ],
        **extra,
    }


async def test_response_size_follows_the_request_not_the_output_list(client: httpx.AsyncClient) -> None:
    single = await client.post(INFER, json=body(64, outputs=[{"name": "probabilities"}]))
    assert single.status_code == 200
    amplified = await client.post(INFER, content=orjson.dumps(body(64, outputs=[{"name": "probabilities"}] * 40_000)))
    assert amplified.status_code == 400
    assert len(amplified.content) < 1000


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ([{"name": "label"}, {"name": "label"}], "output named more than once"),
        ([{"name": "logits"}], "unknown output 'logits'"),
        ([{"name": "label"}, {"name": "probabilities"}, {"name": "label"}], "outputs: List should have at most 2"),
    ],
    ids=["duplicate", "unknown", "over-the-cap"],
)
async def test_outputs_are_checked(client: httpx.AsyncClient, outputs: list[dict[str, str]], message: str) -> None:
    response = await client.post(INFER, json=body(2, outputs=outputs))
    assert response.status_code == 400
    assert message in response.json()["error"]


async def test_a_megabyte_of_tiny_strings_is_refused_before_it_is_walked(client: httpx.AsyncClient) -> None:
    strings = ["a"] * 240_000
    declared = {
        "inputs": [
            {"name": "premise", "shape": [240_000], "datatype": "BYTES", "data": strings},
            {"name": "hypothesis", "shape": [240_000], "datatype": "BYTES", "data": ["a"]},
        ]
    }
    assert len(orjson.dumps(declared)) < 1_048_576
    started = time.perf_counter()
    too_many = await client.post(INFER, content=orjson.dumps(declared))
    assert too_many.status_code == 413
    assert "the limit is max_pairs_per_request=64" in too_many.json()["error"]
    lying = body(2)
    lying["inputs"][0]["data"] = strings
    mismatched = await client.post(INFER, content=orjson.dumps(lying))
    assert mismatched.status_code == 400
    assert "has shape [2] but 240000 rows" in mismatched.json()["error"]
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize(
    ("data", "shape"),
    [
        ([["a", "b"], ["c"]], [2, 1]),  # rows of the wrong width
        ([[["deep"]], [["er"]]], [2, 1]),  # nested deeper than the shape
        (["x", "y"], [3]),  # fewer rows than declared
    ],
    ids=["ragged", "too-deep", "short"],
)
async def test_data_that_does_not_match_its_shape_is_400(
    client: httpx.AsyncClient, data: list[Any], shape: list[int]
) -> None:
    request = body(shape[0])
    request["inputs"][0].update(data=data, shape=shape)
    response = await client.post(INFER, json=request)
    assert response.status_code == 400, response.text


@pytest.mark.parametrize(
    "value",
    [b"1" + b"0" * 400, b"NaN", b"Infinity", b"-5", b"0", str(MAX_TIMEOUT_US + 1).encode(), b'"100"', b"true"],
    ids=["400-digits", "nan", "infinity", "negative", "zero", "over-an-hour", "string", "bool"],
)
async def test_timeout_parameter_is_validated(client: httpx.AsyncClient, value: bytes) -> None:
    raw = orjson.dumps(body(1)).replace(b'{"inputs"', b'{"parameters":{"timeout":' + value + b'},"inputs"', 1)
    response = await client.post(INFER, content=raw)
    assert response.status_code == 400, response.text
    assert "parameter 'timeout'" in response.json()["error"] or "parameters" in response.json()["error"]
