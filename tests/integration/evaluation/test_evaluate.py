"""`xnli-serve evaluate` on the tiny demo store and a subset of the shared XNLI dev set."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from app.engine.tasks.nli import LABELS
from app.evaluation.run import evaluate
from app.xnli import read_xnli
from tests.integration.conftest import API_KEY
from tests.support.helpers import ServerProcess, metric_value

# Long end-to-end runs (the evaluation report in-process and over HTTP): make test-slow (CI runs it after make test).
pytestmark = [pytest.mark.integration, pytest.mark.slow]

LANGUAGES = ["en", "de", "zh"]
LIMIT = 40


def test_in_process_report_matches_the_engine_and_http_agrees(
    server: ServerProcess, demo_catalogue: Path, xnli_dir: Path, tmp_path: Path
) -> None:
    # An ONNX deployment beside the others. Not the int8 one here: dynamic quantization scales activations per batch,
    # so its answers depend on which pairs share a batch and cannot equal another path's pair for pair.
    variants = ["xlmr-mnli", "xlmr-hellaswag-mnli", "xlmr-mnli-onnx"]
    local = evaluate(
        xnli_dir, tmp_path / "local", LANGUAGES, variants, catalogue=demo_catalogue, limit_per_language=LIMIT,
        show_progress=False,
    )  # fmt: skip
    before = httpx.get(f"{server.base_url}/metrics").text
    remote = evaluate(
        xnli_dir, tmp_path / "http", LANGUAGES, variants, url=server.base_url, limit_per_language=LIMIT,
        show_progress=False,
    )  # fmt: skip
    after = httpx.get(f"{server.base_url}/metrics").text
    pairs = read_xnli(xnli_dir, LANGUAGES, LIMIT)
    for variant in variants:  # bulk scoring is batch work: it never delays a live service's interactive traffic
        sent = metric_value(after, "xnli_priority_requests_total", variant=variant, priority="batch")
        assert sent - metric_value(before, "xnli_priority_requests_total", variant=variant, priority="batch") == (
            math.ceil(len(pairs) / 32)
        )
    # Direct computation from the engine's own predictions, through the plain HTTP /predict.
    for result in local:
        predicted = []
        for start in range(0, len(pairs), 32):
            chunk = pairs[start : start + 32]
            body = {
                "variant": result.variant,
                "inputs": [{"premise": p.premise, "hypothesis": p.hypothesis} for p in chunk],
            }
            predicted += [
                row["label"] for row in httpx.post(f"{server.base_url}/predict", json=body).json()["predictions"]
            ]
        for language in LANGUAGES:
            rows = [i for i, pair in enumerate(pairs) if pair.language == language]
            expected = np.mean([predicted[i] == pairs[i].label for i in rows])
            assert result.accuracy[language] == pytest.approx(expected)
    for mine, theirs in zip(local, remote, strict=True):
        assert mine.variant == theirs.variant
        assert mine.accuracy == pytest.approx(theirs.accuracy)
        assert mine.confusion == theirs.confusion
    report = (tmp_path / "local" / "report.md").read_text(encoding="utf-8")
    assert "UNTRAINED demo weights" in report
    assert "| none | xlmr-mnli (untrained demo) | xlm-roberta-base | torch float32 |" in report
    assert "| none | xlmr-mnli-onnx (untrained demo) | xlm-roberta-base | onnxruntime float32 |" in report
    data = json.loads((tmp_path / "local" / "results.json").read_text(encoding="utf-8"))
    assert data["baseline"] == "xlmr-mnli"
    assert data["languages"] == LANGUAGES
    assert set(data["variants"][1]["versus_baseline"]) == {*LANGUAGES, "all"}
    for name in ("results.csv", "accuracy_heatmap.png", "accuracy_vs_latency.png"):
        assert (tmp_path / "local" / name).stat().st_size > 0


def test_label_mapping_end_to_end(demo_store: Path, xnli_dir: Path, tmp_path: Path) -> None:
    """A checkpoint biased to always answer 'entailment', saved under another id2label order."""
    folder = tmp_path / "always-entailment"
    shutil.copytree(demo_store / "xlmr-mnli", folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
    order = ["contradiction", "entailment", "neutral"]
    model.config.id2label = dict(enumerate(order))
    model.config.label2id = {label: index for index, label in enumerate(order)}
    with torch.no_grad():
        model.classifier.out_proj.weight.zero_()
        model.classifier.out_proj.bias.copy_(torch.tensor([0.0, 20.0, 0.0]))
    model.save_pretrained(folder)
    catalogue = tmp_path / "variants.toml"
    catalogue.write_text(f'[[variant]]\nname = "always-entailment"\npath = "{folder}"\n', encoding="utf-8")
    results = evaluate(
        xnli_dir, tmp_path / "report", ["fr", "sw"], catalogue=catalogue, limit_per_language=50, show_progress=False
    )
    pairs = read_xnli(xnli_dir, ["fr", "sw"], 50)
    share = np.mean([pair.label == "entailment" for pair in pairs])
    assert results[0].accuracy["all"] == pytest.approx(share)
    predicted_column = results[0].confusion
    assert [row[LABELS.index("entailment")] for row in predicted_column] == [sum(row) for row in predicted_column]


OUR_PAIRS = [  # written for this test: (language, premise, hypothesis, label)
    ("en", "The bakery opens at six.", "Bread can be bought early.", "entailment"),
    ("en", "The bakery opens at six.", "The bakery never opens.", "contradiction"),
    ("en", "The bakery opens at six.", "The bakery sells cakes too.", "neutral"),
    ("en", "A child is flying a kite.", "Someone is outdoors.", "entailment"),
    ("de", "Der Bus hat Verspätung.", "Der Bus ist pünktlich.", "contradiction"),
    ("de", "Der Bus hat Verspätung.", "Der Fahrer ist krank.", "neutral"),
    ("de", "Die Katze schläft.", "Ein Tier ruht sich aus.", "entailment"),
]


def write_both_formats(folder: Path) -> tuple[Path, Path]:
    header = ["language", "gold_label", "sentence1_binary_parse", "sentence2_binary_parse", "sentence1", "sentence2"]
    rows = ["\t".join(header)] + [f"{lang}\t{label}\t( a )\t( b )\t{p}\t{h}" for lang, p, h, label in OUR_PAIRS]
    official = folder / "xnli.test.tsv"
    official.write_text("\n".join(rows) + "\n", encoding="utf-8")
    lines = [
        json.dumps({"premise": p, "hypothesis": h, "label": LABELS.index(label), "language": lang}, ensure_ascii=False)
        for lang, p, h, label in OUR_PAIRS
    ]
    exported = folder / "xnli-export.jsonl"
    exported.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return official, exported


def test_keyed_service_and_both_distribution_formats(secured_server: ServerProcess, tmp_path: Path) -> None:
    """`evaluate --url` against a service that requires a key: a clear refusal without it, the report with it (from
    --api-key or XNLI_SERVE_API_KEY); the XNLI 1.0 file and the Hugging Face JSON lines give the same answers."""
    from typer.testing import CliRunner

    from app.cli import cli

    official, exported = write_both_formats(tmp_path)

    def run(data: Path, out: str, *extra: str, env: dict[str, str] | None = None) -> Any:
        arguments = ["evaluate", "--data", str(data), "--url", secured_server.base_url, "--out", str(tmp_path / out)]
        return CliRunner().invoke(cli, [*arguments, *extra], env=env)

    refused = run(official, "refused", env={"XNLI_SERVE_API_KEY": ""})
    assert refused.exit_code == 2
    assert "answered 401: it requires an API key; pass --api-key or set XNLI_SERVE_API_KEY" in refused.output
    wrong = run(official, "wrong", "--api-key", "not-the-key")
    assert wrong.exit_code == 2
    assert "the key was refused" in wrong.output
    assert "Traceback" not in refused.output + wrong.output
    from_env = run(official, "official", env={"XNLI_SERVE_API_KEY": API_KEY})
    assert from_env.exit_code == 0, from_env.output
    from_option = run(exported, "exported", "--api-key", API_KEY)
    assert from_option.exit_code == 0, from_option.output
    first = json.loads((tmp_path / "official" / "results.json").read_text(encoding="utf-8"))
    second = json.loads((tmp_path / "exported" / "results.json").read_text(encoding="utf-8"))
    assert first["languages"] == second["languages"] == ["en", "de"]
    assert first["parameters"]["pairs"] == len(OUR_PAIRS)
    assert first["variants"][0]["accuracy"] == second["variants"][0]["accuracy"]
    assert first["variants"][0]["confusion"] == second["variants"][0]["confusion"]
    assert sum(map(sum, first["variants"][0]["confusion"])) == len(OUR_PAIRS)
    assert API_KEY not in (tmp_path / "official" / "results.json").read_text(encoding="utf-8")
