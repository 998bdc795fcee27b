"""benchmarks/gpu_check.sh end to end on the CPU (its CPU proof mode): stores, runs, summary and results under $OUT."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration


def check_env(tmp_path: Path, xnli_dir: Path, **extra: str) -> dict[str, str]:
    (tmp_path / "no-wheels").mkdir(exist_ok=True)
    return {
        **os.environ,
        "PYTHON": sys.executable,
        "OUT": str(tmp_path / "out"),
        "GPU_CHECK_WORK": str(tmp_path / "work"),
        "STORE": str(tmp_path / "store"),
        "WHEELS": str(tmp_path / "no-wheels"),  # this environment has every package: nothing to install
        "XNLI_DIR": str(xnli_dir),
        "TMPDIR": str(tmp_path),
        **extra,
    }


@pytest.mark.slow  # a long end-to-end run: make test-slow
def test_without_a_cuda_device_it_stops_and_says_so(xnli_dir: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    env = check_env(tmp_path, xnli_dir)
    completed = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 1
    assert "no CUDA device: nothing to measure" in (tmp_path / "out" / "gpu_check.log").read_text(encoding="utf-8")
    assert not (tmp_path / "store").exists()  # stopped before building anything


@pytest.mark.slow  # `make test-slow` (CI runs it after `make test`)
def test_gpu_check_runs_end_to_end_on_the_cpu(demo_store: Path, xnli_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = check_env(
        tmp_path,
        xnli_dir,
        GPU_CHECK_DEVICE="cpu",
        GPU_CHECK_SIZES="tiny",
        GPU_CHECK_DTYPES="float32",
        GPU_CHECK_TOKENIZER_FROM=str(demo_store / "xlmr-mnli"),  # no minute-long training in a test
    )
    completed = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400
    )
    log = (out / "gpu_check.log").read_text(encoding="utf-8")
    assert completed.returncode == 0, log[-3000:]
    assert "GPU: none visible to torch" in log
    assert "building the tiny demo store (--tokenizer-from" in log
    assert "run tiny-float32 (limit" in log
    assert "failed or timed out" not in log
    assert "worker pipeline off vs on, tiny-float32" in log
    assert re.search(r"on/off per round \[[0-9., ]+\], median [0-9.]+", log)
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "| gpu-tiny-float32.json | tiny, float32, cpu (" in summary
    with tarfile.open(out / "results.tar.gz") as archive:
        names = {Path(name).name for name in archive.getnames()}
    assert {
        "gpu-tiny-float32.json",
        "run-tiny-float32.log",
        "server-tiny-float32.log",
        "pipeline-tiny-float32.json",
    } <= names
    assert sorted(path.name for path in out.iterdir()) == ["gpu_check.log", "results.tar.gz", "summary.md"]
