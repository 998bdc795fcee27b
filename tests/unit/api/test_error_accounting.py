"""Every refusal is counted once in xnli_requests_total, and each protocol answers in its own error shape: by its
router, for middleware's 401 and 413 too."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from prometheus_client import REGISTRY

from app.api.accounting import outcome_for
from app.api.errors import from_engine
from app.engine.engine import Engine
from app.engine.errors import (
    EngineError,
)
from app.metrics import UNKNOWN_VARIANT
from app.service.prediction import ClientDisconnected, InvalidQueryError, TooManyPairsError, outcome_of
from tests.support.helpers import ENGINE_ERRORS
from tests.unit.api.conftest import client_for

PAIR = {"premise": "Il pleut depuis ce matin.", "hypothesis": "Le sol est sec."}
INFER = "/v2/models/xlmr-mnli/infer"
TENSORS = {
    "inputs": [
        {"name": "premise", "shape": [1], "datatype": "BYTES", "data": [PAIR["premise"]]},
        {"name": "hypothesis", "shape": [1], "datatype": "BYTES", "data": [PAIR["hypothesis"]]},
    ]
}
WRONG_DATATYPE = {"inputs": [{**TENSORS["inputs"][0], "datatype": "FP32"}, TENSORS["inputs"][1]]}


def requests_total(variant: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("xnli_requests_total", {"variant": variant, "outcome": outcome}) or 0.0


def snapshot() -> dict[tuple[str, str], float]:
    counts: dict[tuple[str, str], float] = {}
    for family in REGISTRY.collect():
        if family.name == "xnli_requests":
            for sample in family.samples:
                if sample.name == "xnli_requests_total":
                    counts[sample.labels["variant"], sample.labels["outcome"]] = sample.value
    return counts


def counted_since(before: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    """What xnli_requests_total gained since ``before``, series by series."""
    return {key: value - before.get(key, 0.0) for key, value in snapshot().items() if value != before.get(key, 0.0)}


Send = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


@pytest.mark.parametrize(
    ("send", "status", "counted_as"),
    [
        (lambda http: http.post(INFER, json=WRONG_DATATYPE), 400, ("xlmr-mnli", "client_error")),
        (lambda http: http.post(INFER, content=b"{not json"), 400, ("xlmr-mnli", "client_error")),
        (lambda http: http.post("/v2/models/ghost/infer", json=TENSORS), 404, (UNKNOWN_VARIANT, "not_found")),
        (
            lambda http: http.post("/v2/models/xlmr-mnli/versions/7/infer", json=TENSORS),
            404,
            ("xlmr-mnli", "not_found"),
        ),
        (lambda http: http.get("/v2/models/ghost"), 404, (UNKNOWN_VARIANT, "not_found")),
        (lambda http: http.post("/predict", json={"premise": ""}), 422, (UNKNOWN_VARIANT, "client_error")),
        (lambda http: http.post("/predict", json={**PAIR, "variant": "ghost"}), 404, (UNKNOWN_VARIANT, "not_found")),
        (lambda http: http.post("/predict", json={**PAIR, "truncate": 1}), 422, (UNKNOWN_VARIANT, "client_error")),
        (lambda http: http.get("/v2/no-such-route"), 404, (UNKNOWN_VARIANT, "not_found")),
    ],
    ids=[
        "oip-400-tensor",
        "oip-400-json",
        "oip-404-model",
        "oip-404-version",
        "oip-404-metadata",
        "native-422",
        "native-404-variant",
        "native-422-strict",
        "oip-404-path",
    ],
)
async def test_every_refusal_is_counted_once(
    client: httpx.AsyncClient, send: Send, status: int, counted_as: tuple[str, str]
) -> None:
    before = snapshot()
    response = await send(client)
    assert response.status_code == status, response.text
    assert counted_since(before) == {counted_as: 1.0}


@pytest.mark.parametrize("path", ["/predict", INFER])
async def test_a_prediction_is_counted_once(client: httpx.AsyncClient, path: str) -> None:
    before = snapshot()
    response = await client.post(path, json=PAIR if path == "/predict" else TENSORS)
    assert response.status_code == 200
    assert counted_since(before) == {("xlmr-mnli", "success"): 1.0}


async def test_a_refusal_by_the_service_is_counted_once(engine: Engine) -> None:
    async with client_for(engine, max_pairs_per_request=2) as http:
        before = snapshot()
        response = await http.post("/predict", json={"inputs": [PAIR] * 3})
        assert response.status_code == 413
        assert response.json()["error"]["type"] == "too_many_pairs"
        assert counted_since(before) == {("xlmr-mnli", "client_error"): 1.0}


@pytest.mark.parametrize(
    ("path", "oip"),
    [("/predict", False), ("/variants", False), (INFER, True), ("/v2", True), ("/v2/repository/index", True)],
)
async def test_middleware_401_takes_the_protocols_shape_and_is_counted(
    keyed_client: httpx.AsyncClient, path: str, oip: bool
) -> None:
    before = snapshot()
    response = await keyed_client.post(path, json=PAIR)
    assert response.status_code == 401
    error = response.json()["error"]
    if oip:
        assert error == "missing API key: send Authorization: Bearer <key>"
    else:
        assert error["type"] == "unauthorized"
    assert counted_since(before) == {(UNKNOWN_VARIANT, "client_error"): 1.0}


@pytest.mark.parametrize(("path", "oip"), [("/predict", False), (INFER, True), ("/v2/repository/index", True)])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_middleware_413_takes_the_protocols_shape_and_is_counted(
    engine: Engine, path: str, oip: bool, chunked: bool
) -> None:
    payload = b'{"premise": "' + b"x" * 4096 + b'"}'

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 1024):
            yield payload[start : start + 1024]

    async with client_for(engine, max_body_bytes=1024) as http:
        before = snapshot()
        response = await http.post(path, content=chunks() if chunked else payload)
        assert response.status_code == 413
        error = response.json()["error"]
        if oip:
            assert error == "request body over 1024 bytes"
        else:
            assert error == {"type": "payload_too_large", "message": "request body over 1024 bytes"}
        # A chunked body is cut while the route reads it: the OIP route had already named its model.
        variant = "xlmr-mnli" if chunked and path == INFER else UNKNOWN_VARIANT
        assert counted_since(before) == {(variant, "client_error"): 1.0}


@pytest.mark.parametrize(
    ("method", "path", "status", "oip"),
    [
        ("GET", "/v2/no-such-route", 404, True),
        ("GET", INFER, 405, True),
        ("GET", "/no-such-route", 404, False),
        ("GET", "/predict", 405, False),
    ],
)
async def test_routing_errors_take_the_shape_of_the_router_that_owns_the_path(
    client: httpx.AsyncClient, method: str, path: str, status: int, oip: bool
) -> None:
    response = await client.request(method, path)
    assert response.status_code == status
    error = response.json()["error"]
    assert isinstance(error, str) if oip else error["type"] in ("not_found", "method_not_allowed")


async def test_validation_errors_take_the_shape_of_the_router(client: httpx.AsyncClient) -> None:
    native = await client.post("/predict", json={"premise": "a"})
    assert native.status_code == 422
    assert native.json()["error"]["type"] == "validation_error"
    oip = await client.post(INFER, json={"inputs": []})
    assert oip.status_code == 400
    assert oip.json()["error"].startswith("invalid inference request")


ERRORS: list[Exception] = [
    *ENGINE_ERRORS,
    InvalidQueryError("no pairs"),
    TooManyPairsError(9, 8),
    EngineError("anything else"),
]


@pytest.mark.parametrize("error", ERRORS, ids=[type(error).__name__ for error in ERRORS])
def test_the_services_outcome_agrees_with_the_status_the_api_answers(error: Exception) -> None:
    assert outcome_of(error) == outcome_for(from_engine(error).status)


def test_a_disconnected_client_is_its_own_outcome() -> None:
    assert outcome_of(ClientDisconnected()) == outcome_for(499) == "disconnected"
