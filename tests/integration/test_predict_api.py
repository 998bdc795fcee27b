"""/predict and friends against a real uvicorn process."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.demo.build_store import DEMO_DEPLOYMENTS, DEMO_LINEUP
from tests.support.helpers import ServerProcess, metric_value

pytestmark = pytest.mark.integration

PAIRS_BY_LANGUAGE = {
    "de": ("Meine Großmutter backt jeden Sonntag einen Kuchen.", "Die Großmutter backt nie."),
    "ar": ("افتتحت البلدية حديقة جديدة بجانب المدرسة.", "هناك حديقة قرب المدرسة."),
    "hi": ("मेरी बहन रोज़ सुबह पार्क में दौड़ने जाती है।", "बहन व्यायाम करती है।"),
    "zh": ("这家书店每天晚上十点关门。", "书店晚上营业。"),
    "sw": ("Mama yangu anapika wali na maharagwe.", "Mama hapiki chochote."),
    "ru": ("Кошка спит на подоконнике.", "Животное отдыхает."),
    "th": ("แมวนอนอยู่บนโซฟา", "มีสัตว์อยู่ในบ้าน"),
}
LABELS = {"entailment", "neutral", "contradiction"}


def check_prediction(prediction: dict[str, Any]) -> None:
    scores = prediction["scores"]
    assert set(scores) == LABELS
    assert math.isclose(sum(scores.values()), 1.0, abs_tol=1e-5)
    assert prediction["label"] == max(scores, key=scores.__getitem__)
    assert prediction["truncated"] is False


def metric_samples(server: ServerProcess) -> dict[str, list[Any]]:
    text = httpx.get(f"{server.base_url}/metrics").text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


@pytest.mark.parametrize("language", sorted(PAIRS_BY_LANGUAGE))
def test_single_pair_in_many_scripts(server: ServerProcess, language: str) -> None:
    premise, hypothesis = PAIRS_BY_LANGUAGE[language]
    response = httpx.post(f"{server.base_url}/predict", json={"premise": premise, "hypothesis": hypothesis})
    assert response.status_code == 200
    body = response.json()
    assert body["variant"] == "xlmr-mnli"
    assert len(body["predictions"]) == 1
    check_prediction(body["predictions"][0])
    for header in ("x-queue-time", "x-inference-time", "x-tokenization-time", "x-total-time", "x-request-id"):
        assert header in response.headers
    total = float(response.headers["x-total-time"])
    assert total >= float(response.headers["x-queue-time"]) + float(response.headers["x-inference-time"])


@pytest.mark.parametrize("variant", [variant.name for variant in DEMO_LINEUP])
def test_batch_request_in_order_for_each_variant(server: ServerProcess, variant: str) -> None:
    inputs = [{"premise": premise, "hypothesis": hypothesis} for premise, hypothesis in PAIRS_BY_LANGUAGE.values()]
    response = httpx.post(f"{server.base_url}/predict", json={"inputs": inputs, "variant": variant})
    assert response.status_code == 200
    body = response.json()
    assert body["variant"] == variant
    assert len(body["predictions"]) == len(inputs)
    for prediction in body["predictions"]:
        check_prediction(prediction)
    singles = [
        httpx.post(f"{server.base_url}/predict", json={**pair, "variant": variant}).json()["predictions"][0]
        for pair in inputs
    ]
    for batched, single in zip(body["predictions"], singles, strict=True):
        for label in LABELS:
            assert batched["scores"][label] == pytest.approx(single["scores"][label], abs=2e-5)


def test_variant_in_the_path(server: ServerProcess) -> None:
    pair = {"premise": "Il pleut.", "hypothesis": "Le sol est mouillé."}
    response = httpx.post(f"{server.base_url}/variants/xlmr-squad-mnli/predict", json=pair)
    assert response.status_code == 200
    assert response.json()["variant"] == "xlmr-squad-mnli"
    conflict = httpx.post(f"{server.base_url}/variants/xlmr-squad-mnli/predict", json={**pair, "variant": "xlmr-mnli"})
    assert conflict.status_code == 422  # the path names the variant; the body may not name another


def test_over_long_premise_is_truncated_and_flagged(server: ServerProcess) -> None:
    premise = "Der Zug nach Hamburg hatte heute Morgen zwanzig Minuten Verspätung. " * 60
    response = httpx.post(f"{server.base_url}/predict", json={"premise": premise, "hypothesis": "Der Zug war spät."})
    assert response.status_code == 200
    assert response.json()["predictions"][0]["truncated"] is True


def test_variants_metadata_flags_untrained_demo_weights(server: ServerProcess) -> None:
    body = httpx.get(f"{server.base_url}/variants").json()
    assert body["default_variant"] == "xlmr-mnli"
    assert "UNTRAINED" in body["notice"]
    by_name = {variant["name"]: variant for variant in body["variants"]}
    assert set(by_name) == {variant.name for variant in DEMO_LINEUP} | {variant.name for variant in DEMO_DEPLOYMENTS}
    for demo in DEMO_LINEUP:
        entry = by_name[demo.name]
        assert entry["intermediate_task"] == demo.intermediate_task
        assert (entry["status"], entry["device"], entry["dtype"]) == ("ready", "cpu", "float32")
        assert (entry["demo"], entry["untrained"]) == (True, True)
        assert entry["parameters"] > 0
    one = httpx.get(f"{server.base_url}/variants/xlmr-hellaswag-mnli")
    assert one.json()["base_model"] == "xlm-roberta-base"
    assert httpx.get(f"{server.base_url}/variants/ghost").status_code == 404


def test_health(server: ServerProcess) -> None:
    assert httpx.get(f"{server.base_url}/health/live").json() == {"status": "live"}
    ready = httpx.get(f"{server.base_url}/health/ready").json()
    assert ready["status"] == "ready"
    assert set(ready["variants"].values()) == {"ready"}


def test_request_id_is_echoed(server: ServerProcess) -> None:
    response = httpx.get(f"{server.base_url}/variants", headers={"X-Request-Id": "trace-42"})
    assert response.headers["x-request-id"] == "trace-42"
    deadline = time.monotonic() + 5.0  # the access log line is written once the answer has left
    while '"request_id":"trace-42"' not in server.logs() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert '"request_id":"trace-42"' in server.logs()


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [("POST", "/predict", {"premise": ""}, 422), ("POST", "/v2/models/ghost/infer", {}, 404)],
    ids=["422", "oip-404"],
)
def test_a_refusal_is_counted_before_its_answer_arrives(
    server: ServerProcess, method: str, path: str, body: dict[str, str], status: int
) -> None:
    outcome = "not_found" if status == 404 else "client_error"

    def counted() -> float:
        text = httpx.get(f"{server.base_url}/metrics").text
        return metric_value(text, "xnli_requests_total", variant="_unknown", outcome=outcome)

    before = counted()
    assert httpx.request(method, f"{server.base_url}{path}", json=body).status_code == status
    assert counted() == before + 1  # no wait: the count is made before the answer is sent


def test_64_concurrent_clients_are_all_answered_in_shared_batches(server: ServerProcess) -> None:
    before = metric_samples(server)

    def batch_totals(samples: dict[str, list[Any]]) -> tuple[float, float]:
        rows = [s for s in samples["xnli_batch_size"] if s.labels.get("variant") == "xlmr-multitask-mnli"]
        total = sum(s.value for s in rows if s.name == "xnli_batch_size_sum")
        count = sum(s.value for s in rows if s.name == "xnli_batch_size_count")
        return total, count

    async def client(http: httpx.AsyncClient, index: int) -> list[int]:
        statuses = []
        pairs = list(PAIRS_BY_LANGUAGE.values())
        for round_ in range(4):
            premise, hypothesis = pairs[(index + round_) % len(pairs)]
            response = await http.post(
                "/predict", json={"premise": premise, "hypothesis": hypothesis, "variant": "xlmr-multitask-mnli"}
            )
            statuses.append(response.status_code)
        return statuses

    async def run() -> list[list[int]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=30) as http:
            return await asyncio.gather(*(client(http, index) for index in range(64)))

    statuses = [status for per_client in asyncio.run(run()) for status in per_client]
    assert statuses == [200] * 256
    after = metric_samples(server)
    pairs = batch_totals(after)[0] - batch_totals(before)[0]
    batches = batch_totals(after)[1] - batch_totals(before)[1]
    assert pairs == 256
    assert batches < pairs  # at least one batch carried more than one pair


def test_metric_families_carry_the_variant_label(server: ServerProcess) -> None:
    httpx.post(f"{server.base_url}/predict", json={"premise": "Il pleut.", "hypothesis": "Il fait beau."})
    samples = metric_samples(server)
    histograms = [
        "xnli_request_duration_seconds",
        "xnli_queue_duration_seconds",
        "xnli_tokenization_duration_seconds",
        "xnli_inference_duration_seconds",
        "xnli_batch_size",
        "xnli_batch_tokens",
        "xnli_batch_padding_ratio",
    ]
    for name in [*histograms, "xnli_requests", "xnli_predictions", "xnli_queue_depth", "xnli_variant_info"]:
        variants = {sample.labels.get("variant") for sample in samples[name]}
        assert "xlmr-mnli" in variants, name
    request_buckets = [
        sample
        for sample in samples["xnli_request_duration_seconds"]
        if sample.name.endswith("_bucket") and sample.labels["variant"] == "xlmr-mnli"
    ]
    assert {sample.labels["endpoint"] for sample in request_buckets} >= {"predict"}
    assert float(request_buckets[0].labels["le"]) <= 0.0002  # sub-millisecond resolution
    info = [sample for sample in samples["xnli_variant_info"] if sample.labels["variant"] == "xlmr-hellaswag-mnli"]
    assert info[0].labels == {
        "variant": "xlmr-hellaswag-mnli",
        "base_model": "xlm-roberta-base",
        "intermediate_task": "hellaswag",
        "device": "cpu",
        "dtype": "float32",
        "backend": "torch",
        "quantization": "none",
    }
    outcomes = {s.labels["outcome"] for s in samples["xnli_requests"] if s.name == "xnli_requests_total"}
    assert "success" in outcomes


LONG = "Der Zug nach Hamburg hatte heute Morgen zwanzig Minuten Verspätung. " * 60


@pytest.mark.parametrize(
    ("body", "status", "error_type", "fragment"),
    [
        pytest.param({"premise": "", "hypothesis": "b"}, 422, "validation_error", "premise", id="empty-premise"),
        pytest.param(
            {"premise": "a", "hypothesis": " \t"}, 422, "validation_error", "hypothesis: String should", id="blank"
        ),
        pytest.param({"premise": "a"}, 422, "validation_error", "hypothesis: Field required", id="missing-hypothesis"),
        pytest.param({}, 422, "validation_error", "premise: Field required", id="empty-body"),
        pytest.param({"premise": 1, "hypothesis": "b"}, 422, "validation_error", "premise", id="wrong-type"),
        pytest.param({"inputs": "x"}, 422, "validation_error", "inputs", id="inputs-not-list"),
        pytest.param({"inputs": []}, 422, "validation_error", "inputs", id="inputs-empty"),
        pytest.param({"inputs": [{"premise": "a"}]}, 422, "validation_error", "hypothesis", id="pair-incomplete"),
        pytest.param(
            {"premise": "a", "hypothesis": "b", "inputs": [{"premise": "a", "hypothesis": "b"}]},
            422,
            "validation_error",
            "premise: Extra inputs are not permitted",
            id="both-forms",
        ),
        pytest.param({"premise": "a", "hypothesis": "b", "extra": 1}, 422, "validation_error", "extra", id="extra"),
        pytest.param(
            {"premise": "a", "hypothesis": "b", "variant": "ghost"}, 404, "unknown_variant", "ghost", id="variant"
        ),
        pytest.param(
            {"inputs": [{"premise": "a", "hypothesis": "b"}] * 65},
            413,
            "too_many_pairs",
            "max_pairs_per_request=64",
            id="too-many-pairs",
        ),
        pytest.param(
            {"premise": LONG, "hypothesis": "b", "truncate": False},
            422,
            "input_too_long",
            "max_seq_len 256",
            id="too-long-no-truncate",
        ),
    ],
)
def test_bad_input_gets_a_json_4xx(
    server: ServerProcess, body: dict[str, Any], status: int, error_type: str, fragment: str
) -> None:
    response = httpx.post(f"{server.base_url}/predict", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == error_type
    assert fragment in error["message"]


@pytest.mark.parametrize(
    ("content", "content_type"),
    [(b'{"premise": "a"', "application/json"), (b"\xff\xfe\x00", "application/json"), (b"premise=a", "text/plain")],
)
def test_malformed_bodies_are_4xx_json(server: ServerProcess, content: bytes, content_type: str) -> None:
    response = httpx.post(f"{server.base_url}/predict", content=content, headers={"content-type": content_type})
    assert 400 <= response.status_code < 500
    assert "error" in response.json()


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/nowhere", 404), ("GET", "/predict", 405)])
def test_unknown_routes_answer_json(server: ServerProcess, method: str, path: str, status: int) -> None:
    response = httpx.request(method, f"{server.base_url}{path}")
    assert response.status_code == status
    assert response.json()["error"]["type"] in {"not_found", "method_not_allowed"}


def test_openapi_documents_the_api(server: ServerProcess) -> None:
    schema = httpx.get(f"{server.base_url}/openapi.json").json()
    assert {"/predict", "/variants", "/variants/{name}", "/health/ready", "/health/live"} <= set(schema["paths"])
    assert "untrained" in schema["info"]["description"]
