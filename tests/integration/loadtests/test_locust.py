"""Real headless Locust runs against a real server, and the comparison report end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests import compare
from tests.helpers import ServerProcess

pytestmark = pytest.mark.integration

LOCUSTFILE = Path(compare.__file__).with_name("locustfile.py")


def stats(prefix: Path) -> dict[tuple[str, str], dict[str, str]]:
    with Path(f"{prefix}_stats.csv").open(encoding="utf-8", newline="") as handle:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(handle)}


@pytest.mark.parametrize("pairs_per_request", [1, 4])
def test_headless_locust_run_splits_stats_per_variant(
    server: ServerProcess, tmp_path: Path, pairs_per_request: int
) -> None:
    prefix = tmp_path / "run"
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", server.base_url,
        "-u", "4", "-r", "4", "-t", "4s", "--csv", str(prefix), "--only-summary",
        "--variants", "xlmr-mnli,xlmr-squad-mnli", "--pairs-per-request", str(pairs_per_request),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    rows = stats(prefix)
    suffix = "" if pairs_per_request == 1 else f" x{pairs_per_request}"
    for variant in ("xlmr-mnli", "xlmr-squad-mnli"):
        post = rows[("POST", f"{variant} /predict{suffix}")]
        assert int(post["Request Count"]) > 10
        assert int(post["Failure Count"]) == 0
        for kind in ("queue", "inference", "other"):  # server-side split recorded from the headers
            assert int(rows[(kind, variant)]["Request Count"]) == int(post["Request Count"])
        assert float(rows[("inference", variant)]["Average Response Time"]) > 0


def test_xnli_payloads_and_arrival_rate(server: ServerProcess, tmp_path: Path, xnli_dir: Path) -> None:
    prefix = tmp_path / "rate"
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", server.base_url,
        "-u", "5", "-r", "5", "-t", "4s", "--csv", str(prefix), "--only-summary", "--arrival-rate", "20",
        "--xnli-dir", str(xnli_dir), "--languages", "ar,hi,zh",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    post = stats(prefix)[("POST", "default /predict")]
    assert int(post["Failure Count"]) == 0
    assert 8 <= float(post["Requests/s"]) <= 30  # paced near 20 requests/s, not as fast as possible


def test_step_ramp_shape(server: ServerProcess, tmp_path: Path) -> None:
    prefix = tmp_path / "steps"
    shapes = LOCUSTFILE.with_name("shapes.py")
    command = [
        sys.executable, "-m", "locust", "-f", f"{LOCUSTFILE},{shapes}", "--headless", "--host", server.base_url,
        "--csv", str(prefix), "--only-summary", "--step-users", "2", "--step-seconds", "1.5", "--steps", "2",
    ]  # fmt: skip
    completed = subprocess.run(command, check=True, capture_output=True, timeout=120, text=True)
    assert int(stats(prefix)[("POST", "default /predict")]["Request Count"]) > 0
    with Path(f"{prefix}_stats_history.csv").open(encoding="utf-8", newline="") as handle:
        users = {int(row["User Count"]) for row in csv.DictReader(handle)}
    assert {2, 4} <= users, completed.stderr[-2000:]


def test_compare_end_to_end(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "report"
    compare.main(
        [
            "--url", server.base_url, "--variants", "xlmr-mnli,xlmr-mnli-onnx-int8", "--users", "1,4",
            "--duration", "3", "--warmup", "1", "--out", str(out),
        ]
    )  # fmt: skip
    for name in (
        "report.md",
        "report.html",
        "results.csv",
        "results.json",
        "latency.png",
        "throughput.png",
        "breakdown.png",
    ):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [(row["variant"], row["offered"]) for row in results] == [
        ("xlmr-mnli", 1.0), ("xlmr-mnli", 4.0), ("xlmr-mnli-onnx-int8", 1.0), ("xlmr-mnli-onnx-int8", 4.0),
    ]  # fmt: skip
    for row in results:
        locust_row = stats(out / "locust" / f"{row['variant']}-users-{row['offered']:g}")[
            ("POST", f"{row['variant']} /predict")
        ]
        assert row["requests"] == int(locust_row["Request Count"])
        assert row["p50_ms"] == float(locust_row["50%"])
        assert row["p99_ms"] == float(locust_row["99%"])
        assert row["requests_per_s"] == pytest.approx(float(locust_row["Requests/s"]))
        assert row["mean_batch_size"] >= 1.0
        assert row["metadata"]["backend"] in {"torch", "onnxruntime"}
    with (out / "results.csv").open(encoding="utf-8", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 4
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Summary" in report
    assert "runs as: torch float32" in report
    assert "runs as: onnxruntime int8-dynamic" in report  # a deployment variant compared like any other
    first = results[0]
    assert f"| {first['offered']:g} | {first['requests_per_s']:.1f} |" in report
