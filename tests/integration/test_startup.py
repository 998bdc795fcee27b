"""Start-up: readiness waits for warm-up, and a bad catalogue stops the process with one clear message."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, running_server, server_command, write_catalogue

pytestmark = pytest.mark.integration


def refused_start(catalogue: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `xnli-serve serve` on a catalogue that must be refused before the port opens (exit code 2)."""
    result = subprocess.run(
        server_command("serve", "--port", str(free_port())),
        env={**os.environ, "XNLI_SERVE_CATALOGUE": str(catalogue), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    return result


def test_ready_only_after_every_variant_is_warmed_up(demo_store: Path, tmp_path: Path) -> None:
    # Large warm-up shapes keep the loading window wide enough to observe; two checkpoints show "every variant"
    # (the warm-up does not depend on the backend; an ONNX variant's large warm-up alone takes a minute on 2 cores).
    names = ["xlmr-mnli", "xlmr-squad-mnli"]
    variants: list[dict[str, object]] = [{"name": name, "checkpoint": name} for name in names]
    catalogue = write_catalogue(
        tmp_path / "variants.toml", demo_store, variants, max_batch_size=256, max_batch_tokens=65536, max_seq_len=512
    )
    with running_server(catalogue, tmp_path, wait=False) as server:
        seen = server.wait_ready()
        assert 503 in seen, seen  # the port was open and answered "not ready" while loading
        assert seen.index(503) < seen.index(200)
        logs = server.logs()
        for name in names:
            assert f"variant {name} ready (warm-up [(128, 512), (256, 256)]" in logs
        variants_seen = httpx.get(f"{server.base_url}/variants").json()["variants"]
        assert [variant["name"] for variant in variants_seen] == names
        assert all(variant["warmup"]["shapes"] == [[128, 512], [256, 256]] for variant in variants_seen)


def test_bad_catalogue_exits_before_serving(demo_store: Path, tmp_path: Path) -> None:
    """The real process: exit code 2 and one line on stderr. Every other refusal (bad
    knobs, unknown keys, labels, faults, key sources, request limits) is checked in-process by
    tests/unit/test_serve_refusals.py through the same `serve` command."""
    catalogue = write_catalogue(
        tmp_path / "variants.toml",
        demo_store,
        [{"name": "xlmr-mnli"}, {"name": "xlmr-squad-mnli", "path": str(demo_store / "missing-folder")}],
    )
    result = refused_start(catalogue)
    assert result.stderr.startswith("xnli-serve: cannot start: variant 'xlmr-squad-mnli': checkpoint folder")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
