"""ONNX Runtime and int8 variants behind the real HTTP API: same answers as torch fp32, reported like any variant."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.demo.build_store import DEMO_DEPLOYMENTS
from app.engine.models.catalogue import load_catalogue
from app.engine.tasks.nli import LABELS
from app.samples import sample_pairs
from tests.support.helpers import ServerProcess, metric_value, running_server, write_catalogue
from tests.unit.engine.backends.test_onnxruntime import corrupt_label_rows

pytestmark = pytest.mark.integration

REFERENCE = "xlmr-mnli"
PAIRS = [{"premise": premise, "hypothesis": hypothesis} for _, premise, hypothesis, _ in sample_pairs()[:48]]


def probabilities(server: ServerProcess, variant: str) -> np.ndarray:
    response = httpx.post(f"{server.base_url}/predict", json={"inputs": PAIRS, "variant": variant}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["variant"] == variant
    return np.array([[prediction["scores"][label] for label in LABELS] for prediction in body["predictions"]])


def describe(server: ServerProcess) -> dict[str, dict[str, Any]]:
    variants = httpx.get(f"{server.base_url}/variants").json()["variants"]
    return {variant["name"]: variant for variant in variants}


def wait_until_not_live(server: ServerProcess, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.base_url}/health/live", timeout=2.0).status_code == 503:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"still live after {timeout}s:\n{server.logs()[-3000:]}")


@pytest.mark.parametrize("deployment", DEMO_DEPLOYMENTS, ids=lambda deployment: deployment.name)
def test_backend_answers_within_its_tolerance_of_torch_fp32(
    server: ServerProcess, demo_catalogue: Path, deployment: Any
) -> None:
    spec = load_catalogue(demo_catalogue).get(deployment.name)
    reference = probabilities(server, REFERENCE)
    served = probabilities(server, deployment.name)
    agreement = float(np.mean(reference.argmax(axis=1) == served.argmax(axis=1)))
    difference = float(np.abs(reference - served).max())
    print(f"{deployment.name} vs {REFERENCE} over HTTP: top-1 agreement {agreement:.3f}, max |dp| {difference:.4f}")
    assert agreement >= spec.min_top1_agreement
    assert difference <= spec.max_probability_diff
    if deployment.quantization == "none":
        assert difference < 1e-4  # a float32 export computes the same function


def test_variants_report_backend_export_and_guard(server: ServerProcess) -> None:
    variants = describe(server)
    assert variants[REFERENCE]["backend"] == "torch"
    assert variants[REFERENCE]["accuracy_guard"]["status"] == "reference"
    for deployment in DEMO_DEPLOYMENTS:
        variant = variants[deployment.name]
        assert (variant["backend"], variant["quantization"]) == (deployment.backend, deployment.quantization)
        assert variant["status"] == "ready"
        assert variant["untrained"] is True  # the demo flag follows the checkpoint, whatever runs it
        assert variant["execution"]["providers"][0] == "CPUExecutionProvider"
        assert Path(variant["execution"]["export"]["path"]).is_file()
        guard = variant["accuracy_guard"]
        assert guard["status"] == "passed"
        assert guard["probe_pairs"] >= 70
        assert guard["top1_agreement"] >= guard["min_top1_agreement"]
        assert guard["max_probability_diff"] <= guard["max_probability_diff_allowed"]


def test_variant_info_metric_names_the_backend(server: ServerProcess) -> None:
    text = httpx.get(f"{server.base_url}/metrics").text
    for deployment in DEMO_DEPLOYMENTS:
        labels = {"variant": deployment.name, "backend": deployment.backend, "quantization": deployment.quantization}
        assert metric_value(text, "xnli_variant_info", **labels) == 1


@pytest.mark.slow  # a long end-to-end run: make test-slow
def test_corrupted_export_is_refused_at_start_up(server: ServerProcess, demo_store: Path, tmp_path: Path) -> None:
    """``server`` (the shared demo server) exported the demo checkpoint; a copy of it with a corrupted export."""
    checkpoint = tmp_path / "store" / "xlmr-mnli"
    shutil.copytree(demo_store / "xlmr-mnli", checkpoint)
    exports = [
        folder / "model.onnx"
        for folder in (checkpoint / ".xnli-serve-onnx").iterdir()
        if '"kind": "float32"' in (folder / "manifest.json").read_text(encoding="utf-8")
    ]
    assert len(exports) == 1, "the shared server exported this checkpoint already"
    corrupt_label_rows(exports[0])
    catalogue = write_catalogue(
        tmp_path / "variants.toml",
        checkpoint.parent,
        [{"name": "xlmr-mnli"}, {"name": "xlmr-mnli-onnx", "backend": "onnxruntime"}],
    )
    with running_server(catalogue, tmp_path, wait=False) as server:
        wait_until_not_live(server)
        assert httpx.get(f"{server.base_url}/health/ready").status_code == 503
        refused = describe(server)["xlmr-mnli-onnx"]
        assert refused["status"] == "failed"
        assert "accuracy guard failed against torch float32" in refused["error"]
        assert "accuracy guard failed" in server.logs()
        response = httpx.post(f"{server.base_url}/predict", json={**PAIRS[0], "variant": "xlmr-mnli-onnx"})
        assert response.status_code == 503
