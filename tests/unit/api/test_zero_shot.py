"""POST /zero-shot in-process (issue #26): the answers equal transformers' zero-shot-classification pipeline on the
same demo checkpoint, single- and multi-label, in several scripts; the size limit counts texts x labels; bad bodies
are 422 with a message naming the rule; the request is counted once, under the zero_shot endpoint label."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY
from transformers import pipeline

# Written for these tests (not XNLI sentences): one text and its labels per script, in the script's language.
SCRIPTS: dict[str, tuple[list[str], list[str], str]] = {
    "latin": (
        ["Le boulanger ouvre sa boutique avant l'aube chaque matin.", "Der Stürmer traf zweimal in der Nachspielzeit."],
        ["cuisine", "sport", "politique", "météo"],
        "Ce texte parle de {}.",
    ),
    "cyrillic": (
        ["Вчера в горах выпал первый снег.", "Новый закон о налогах приняли в среду."],
        ["погода", "политика", "музыка"],
        "Этот текст про {}.",
    ),
    "arabic": (["افتتحت المكتبة العامة قسماً جديداً للأطفال."], ["ثقافة", "رياضة", "اقتصاد"], "هذا النص عن {}."),
    "devanagari": (
        ["बारिश के कारण आज का मैच रद्द हो गया।", "नई ट्रेन दिल्ली से मुंबई तक चलेगी।"],
        ["खेल", "यात्रा", "मौसम"],
        "यह पाठ {} के बारे में है।",
    ),
    "cjk": (
        ["这家餐厅的饺子非常好吃。", "火车晚点了两个小时。"],
        ["美食", "交通", "科技", "教育"],
        "这段文字是关于{}的。",
    ),
    "thai": (["ร้านกาแฟนี้เปิดตั้งแต่เจ็ดโมงเช้า"], ["อาหาร", "กีฬา"], "ข้อความนี้เกี่ยวกับ{}"),
    "greek": (
        ["Το πλοίο αναχώρησε από τον Πειραιά το πρωί."],
        ["ταξίδι", "μουσική", "υγεία"],
        "Αυτό το κείμενο αφορά {}.",
    ),
}
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference(demo_store: Path) -> Any:
    """transformers' own pipeline over the checkpoint the in-process engine serves as xlmr-mnli."""
    torch.manual_seed(0)
    folder = str(demo_store / "xlmr-mnli")
    return pipeline("zero-shot-classification", model=folder, tokenizer=folder, device="cpu")


@pytest.mark.parametrize("multi_label", [False, True], ids=["single-label", "multi-label"])
@pytest.mark.parametrize("script", sorted(SCRIPTS))
async def test_answers_equal_the_transformers_pipeline(
    client: httpx.AsyncClient, reference: Any, script: str, multi_label: bool
) -> None:
    texts, labels, template = SCRIPTS[script]
    response = await client.post(
        "/zero-shot",
        json={"texts": texts, "candidate_labels": labels, "hypothesis_template": template, "multi_label": multi_label},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["variant"] == response.headers["x-variant"] == "xlmr-mnli"
    assert body["hypothesis_template"] == template
    expected = reference(texts, candidate_labels=labels, hypothesis_template=template, multi_label=multi_label)
    assert len(body["results"]) == len(texts)
    for answer, wanted in zip(body["results"], expected, strict=True):
        assert answer["sequence"] == wanted["sequence"]
        assert answer["labels"] == wanted["labels"]
        assert answer["scores"] == pytest.approx(wanted["scores"], abs=TOLERANCE)
        assert answer["truncated"] is False
    if not multi_label:
        assert all(sum(answer["scores"]) == pytest.approx(1.0, abs=1e-5) for answer in body["results"])


async def test_one_label_is_scored_on_its_own_as_the_pipeline_does(client: httpx.AsyncClient, reference: Any) -> None:
    """A softmax over one label would always answer 1.0: the pipeline scores a lone label multi-label, so do we."""
    text, label = "Il pleut depuis trois jours sur la côte.", "météo"
    response = await client.post("/zero-shot", json={"text": text, "candidate_labels": [label]})
    assert response.status_code == 200, response.text
    (answer,) = response.json()["results"]
    wanted = reference(text, candidate_labels=[label], hypothesis_template="This example is {}.")
    assert answer["scores"] == pytest.approx(wanted["scores"], abs=TOLERANCE)
    assert answer["scores"][0] < 1.0


async def test_the_variant_route_and_the_timing_headers(client: httpx.AsyncClient) -> None:
    body = {"text": "Η ομάδα κέρδισε το πρωτάθλημα.", "candidate_labels": ["αθλητισμός", "οικονομία"], "language": "el"}
    response = await client.post("/variants/xlmr-mnli/zero-shot", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["hypothesis_template"] == "Το θέμα αυτού του παραδείγματος είναι {}."  # the el default
    for header in ("x-queue-time", "x-tokenization-time", "x-inference-time", "x-total-time"):
        assert float(response.headers[header]) >= 0
    unknown = await client.post("/variants/nope/zero-shot", json=body)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "unknown_variant"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_request_is_counted_once_under_the_zero_shot_endpoint(client: httpx.AsyncClient) -> None:
    before = sample("xnli_requests_total", variant="xlmr-mnli", outcome="success")
    timed = sample("xnli_request_duration_seconds_count", variant="xlmr-mnli", endpoint="zero_shot")
    response = await client.post("/zero-shot", json={"texts": ["a b c"] * 3, "candidate_labels": ["x", "y"]})
    assert response.status_code == 200, response.text
    assert sample("xnli_requests_total", variant="xlmr-mnli", outcome="success") == before + 1
    assert sample("xnli_request_duration_seconds_count", variant="xlmr-mnli", endpoint="zero_shot") == timed + 1


async def test_the_size_limit_counts_texts_times_labels(client: httpx.AsyncClient) -> None:
    """64 pairs by default: 16 texts x 4 labels fit, 13 x 5 do not, though neither count alone is over."""
    fits = await client.post("/zero-shot", json={"texts": ["un texte"] * 16, "candidate_labels": list("abcd")})
    assert fits.status_code == 200, fits.text
    response = await client.post("/zero-shot", json={"texts": ["un texte"] * 13, "candidate_labels": list("abcde")})
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["type"] == "too_many_pairs"
    assert "13 texts x 5 candidate labels = 65 pairs" in error["message"]
    assert "max_pairs_per_request=64" in error["message"]


async def test_a_text_repeated_per_label_past_the_body_limit_is_413_not_overload(client: httpx.AsyncClient) -> None:
    """The auditor's case: one long text with no place to cut, 64 labels: a 99 KB body whose pairs hold 6.3 MB of
    text, beyond the tokenizing backlog (4 Mi characters); it was refused as overload (429, retry), which no retry
    could ever pass. Now a 413 naming the expansion, against the body limit the service runs with."""
    body = {"text": "x" * 99_000, "candidate_labels": [f"label {index}" for index in range(64)]}
    response = await client.post("/zero-shot", json=body)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["type"] == "too_many_pairs"
    assert "expand to" in error["message"]
    assert "1048576" in error["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"text": "x", "candidate_labels": []}, "candidate_labels"),
        ({"text": "x", "candidate_labels": ["a", "b", "a"]}, "candidate label 2 ('a') repeats label 0"),
        ({"text": "x", "candidate_labels": ["a"], "hypothesis_template": "no placeholder"}, "should match pattern"),
        ({"text": "x", "candidate_labels": ["a"], "hypothesis_template": "{} and {}"}, "should match pattern"),
        ({"text": "x", "candidate_labels": ["a"], "hypothesis_template": "{0} is it"}, "should match pattern"),
        ({"text": "x", "candidate_labels": ["a"], "hypothesis_template": {"fr": "sans"}}, '"fr"],"msg":"String'),
        ({"text": "x", "texts": ["y"], "candidate_labels": ["a"]}, "texts.text: Extra inputs are not permitted"),
        ({"candidate_labels": ["a"]}, "text.text: Field required"),
        ({"texts": [], "candidate_labels": ["a"]}, "texts"),
        ({"text": "   ", "candidate_labels": ["a"]}, "text"),
        ({"text": "x", "candidate_labels": ["  "]}, "candidate_labels"),
        ({"text": "x", "candidate_labels": ["a"], "multi_label": "yes"}, "multi_label"),
        ({"text": "x", "candidate_labels": ["a"], "priority": "shadow"}, "priority"),
    ],
    ids=[
        "no-labels",
        "duplicate-label",
        "template-without-placeholder",
        "template-with-two",
        "template-with-a-numbered-field",
        "language-template-without-placeholder",
        "text-and-texts",
        "neither",
        "empty-texts",
        "blank-text",
        "blank-label",
        "multi-label-not-a-boolean",
        "client-asks-shadow",
    ],
)
async def test_bad_bodies_are_422_naming_the_rule(
    client: httpx.AsyncClient, body: dict[str, Any], message: str
) -> None:
    response = await client.post("/zero-shot", json=body)
    assert response.status_code == 422, response.text
    assert message in response.text


# --- the Open Inference Protocol's infer: the same task on the same model name ------------------------------------


def oip_body(texts: list[str], labels: list[str], **parameters: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts},
            {"name": "candidate_labels", "datatype": "BYTES", "shape": [len(labels)], "data": labels},
        ],
        "parameters": parameters,
    }


@pytest.mark.parametrize("multi_label", [False, True], ids=["single-label", "multi-label"])
async def test_v2_infer_answers_as_zero_shot_does(client: httpx.AsyncClient, multi_label: bool) -> None:
    texts, labels, template = SCRIPTS["cyrillic"]
    native = await client.post(
        "/zero-shot",
        json={"texts": texts, "candidate_labels": labels, "hypothesis_template": template, "multi_label": multi_label},
    )
    response = await client.post(
        "/v2/models/xlmr-mnli/infer",
        json=oip_body(texts, labels, hypothesis_template=template, multi_label=multi_label),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    outputs = {output["name"]: output for output in body["outputs"]}
    assert outputs["labels"]["shape"] == outputs["scores"]["shape"] == [len(texts), len(labels)]
    assert outputs["scores"]["datatype"] == "FP32"
    assert body["parameters"]["hypothesis_template"] == template
    results = native.json()["results"]
    assert outputs["labels"]["data"] == [label for result in results for label in result["labels"]]
    assert outputs["scores"]["data"] == pytest.approx([score for result in results for score in result["scores"]])


async def test_v2_metadata_names_the_zero_shot_task(client: httpx.AsyncClient) -> None:
    parameters = (await client.get("/v2/models/xlmr-mnli")).json()["parameters"]
    assert "candidate_labels" in parameters["zero_shot_inputs"]
    assert "scores" in parameters["zero_shot_outputs"]
    assert "multi_label" in parameters["zero_shot_parameters"]


async def test_v2_binary_scores_and_selected_outputs(client: httpx.AsyncClient) -> None:
    body = oip_body(["Il neige."], ["météo", "sport"])
    body["outputs"] = [{"name": "scores", "parameters": {"binary_data": True}}]
    response = await client.post("/v2/models/xlmr-mnli/infer", json=body)
    assert response.status_code == 200, response.text
    header_length = int(response.headers["inference-header-content-length"])
    head = response.content[:header_length]
    assert b'"scores"' in head
    assert b'"labels"' not in head
    scores = np.frombuffer(response.content[header_length:], dtype="<f4")
    assert scores.shape == (2,)
    assert float(scores.sum()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}, 400, "candidate_labels"),
        (oip_body(["x"], ["a"], multi_label="yes"), 400, "multi_label"),
        (oip_body(["x"], ["a"], hypothesis_template=3), 400, "hypothesis_template"),
        (oip_body(["x"], ["a", "a"]), 422, "repeats label 0"),
        (oip_body(["x"], ["a"], hypothesis_template="none"), 422, "exactly once"),
        (oip_body(["x"] * 13, list("abcde")), 413, "13 texts x 5 candidate labels"),
        ({**oip_body(["x"], ["a"]), "outputs": [{"name": "probabilities"}]}, 400, "outputs are labels, scores"),
    ],
    ids=["missing-labels", "multi-label-type", "template-type", "duplicate", "template", "too-many", "nli-output"],
)
async def test_v2_zero_shot_errors(client: httpx.AsyncClient, body: dict[str, Any], status: int, message: str) -> None:
    response = await client.post("/v2/models/xlmr-mnli/infer", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
