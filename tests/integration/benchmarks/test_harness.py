"""The benchmark harness runs end to end on the tiny store (a smoke run; the figures themselves live in RESULTS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # `make test-slow` (CI runs it after `make test`)


def test_engine_and_service_benchmarks_write_their_figures(
    demo_catalogue: Path, xnli_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "service.json"
    command = [
        sys.executable, "-m", "benchmarks.service", "--catalogue", str(demo_catalogue), "--variant", "xlmr-mnli",
        "--fair-variant", "xlmr-squad-mnli", "--data", str(xnli_dir), "--pairs", "64", "--concurrency", "1,4",
        "--batched-concurrency", "2", "--seconds", "2", "--engine-batch-sizes", "1,8", "--rates", "20",
        "--client-processes", "2", "--out", str(out),
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True)
    assert "machine: cpu=" in completed.stdout
    report = json.loads(out.read_text(encoding="utf-8"))
    assert [row["batch_size"] for row in report["engine"]["rows"]] == [1, 8]
    assert all(row["pairs"] == 64 for row in report["engine"]["rows"])  # no time budget: every pair
    assert (report["engine"]["size"], report["engine"]["tokenizer"]["trained_on"]) == ("tiny", "sample pairs")
    assert 10 < report["engine"]["tokens_per_pair"]["mean"] <= report["engine"]["tokens_per_pair"]["max"]
    limit = report["engine"]["best"]["pairs_per_s"]
    for row in report["closed_loop"]:
        assert row["errors"] == 0
        assert row["ratio_to_engine"] == pytest.approx(row["pairs_per_s"] / limit)
        assert 0.0 <= row["padding_share"] < 1.0
        assert row["client_processes"] == min(2, row["concurrency"])  # clients spread over two processes
    assert [(row["pairs_per_request"], row["concurrency"]) for row in report["closed_loop"]] == [
        (1, 1), (1, 4), (16, 2)
    ]  # fmt: skip
    assert report["open_loop"][0]["offered_per_s"] == 20
    assert report["http_floor"][0]["requests_per_s"] > 0
    assert sum(report["fair_share"]["shares"].values()) == pytest.approx(1.0)
    summary = subprocess.run(
        [sys.executable, "-m", "benchmarks.summary", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "| service.json | tiny, float32, cpu (" in summary.stdout


def test_backend_comparison_measures_each_way_of_running_one_checkpoint(
    demo_catalogue: Path, xnli_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "backends.json"
    command = [
        sys.executable, "-m", "benchmarks.backends", "--catalogue", str(demo_catalogue),
        "--variants", "xlmr-mnli,xlmr-mnli-onnx,xlmr-mnli-onnx-int8", "--data", str(xnli_dir), "--pairs", "32",
        "--batch-sizes", "1,8", "--out", str(out),
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True)
    results = json.loads(out.read_text(encoding="utf-8"))["backends"]
    assert [(result["backend"], result["quantization"]) for result in results] == [
        ("torch", "none"), ("onnxruntime", "none"), ("onnxruntime", "int8-dynamic"),
    ]  # fmt: skip
    assert results[0]["accuracy_guard"] is None  # torch fp32 is the reference
    assert all(result["accuracy_guard"]["passed"] for result in results[1:])
    assert all(result["rss_mb_after_load"] > 0 for result in results)
    assert "| xlmr-mnli | torch float32 |" in completed.stdout
    assert "| xlmr-mnli-onnx-int8 | onnxruntime int8-dynamic |" in completed.stdout
    assert "(1.00x)" in completed.stdout  # the reference against itself


@pytest.mark.parametrize(("budget", "expected_pairs"), [("0.000001", [1, 8]), (None, [40, 40])])
def test_engine_time_budget_stops_each_batch_size_early(
    budget: str | None, expected_pairs: list[int], demo_catalogue: Path, xnli_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "engine.json"
    command = [
        sys.executable, "-m", "benchmarks.engine", "--catalogue", str(demo_catalogue), "--data", str(xnli_dir),
        "--pairs", "40", "--batch-sizes", "1,8", "--out", str(out),
    ]  # fmt: skip
    if budget is not None:
        command += ["--seconds-per-batch-size", budget]
    subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True)
    rows = json.loads(out.read_text(encoding="utf-8"))["engine"]["rows"]
    assert [row["pairs"] for row in rows] == expected_pairs
    assert all(row["pairs_per_s"] > 0 for row in rows)


def test_grpc_vs_http_benchmark_measures_every_protocol(demo_catalogue: Path, xnli_dir: Path, tmp_path: Path) -> None:
    """benchmarks/grpc_vs_http.py (issue #26): each protocol answers every request of a short run, both sizes."""
    out = tmp_path / "grpc_vs_http.json"
    command = [
        sys.executable, "-m", "benchmarks.grpc_vs_http", "--catalogue", str(demo_catalogue), "--data", str(xnli_dir),
        "--pairs", "64", "--sizes", "1,16", "--concurrency", "2", "--rounds", "1", "--seconds", "0.5",
        "--warmup-seconds", "0.2", "--out", str(out),
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True)
    assert "vs grpc" in completed.stdout
    rows = json.loads(out.read_text(encoding="utf-8"))["rows"]
    assert [(row["protocol"], row["pairs_per_request"]) for row in rows] == [
        (protocol, size) for size in (1, 16) for protocol in ("grpc", "http-json", "http-binary")
    ]
    for row in rows:
        assert row["errors"] == 0
        assert row["requests"] > 0


def test_zero_shot_benchmark_compares_service_and_pipeline(demo_catalogue: Path, tmp_path: Path) -> None:
    """issue #26: every step of every round measured, and both ratios per concurrency written."""
    out = tmp_path / "zero-shot.json"
    command = [
        sys.executable, "-m", "benchmarks.zero_shot", "--catalogue", str(demo_catalogue), "--labels", "2,3",
        "--concurrency", "1,2", "--seconds", "0.5", "--rounds", "1", "--threads", "1", "--out", str(out),
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True)
    assert "service over the pipeline (default batch_size=1)" in completed.stdout
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["threads"] == 1
    assert {row["who"] for row in report["rows"]} == {
        "pipeline batch_size=1", "pipeline batch_size=2", "pipeline batch_size=3", "service c=1", "service c=2",
    }  # fmt: skip
    assert all(row["texts"] > 0 and row.get("errors", 0) == 0 for row in report["rows"])
    assert len(report["verdicts"]) == 4
    assert all(verdict["over_default"] > 0 for verdict in report["verdicts"])
