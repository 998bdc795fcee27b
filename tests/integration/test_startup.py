"""Start-up: readiness waits until every variant is loaded and warmed up.

What `serve` refuses (exit code 2, one message) is checked in-process by tests/unit/test_serve_refusals.py, and as a
real process by tests/integration/test_checkpoint_layouts.py.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.helpers import running_server, write_catalogue

pytestmark = pytest.mark.integration


@pytest.mark.slow  # a long end-to-end run: make test-slow
def test_ready_only_after_every_variant_is_warmed_up(demo_store: Path, tmp_path: Path) -> None:
    # Warm-up shapes of twice the default's tokens keep the loading window wide enough to observe; two checkpoints
    # show "every variant" (warm-up does not depend on the backend; an ONNX variant's large warm-up is slow on 2 cores).
    names = ["xlmr-mnli", "xlmr-squad-mnli"]
    variants: list[dict[str, object]] = [{"name": name, "checkpoint": name} for name in names]
    catalogue = write_catalogue(
        tmp_path / "variants.toml", demo_store, variants, max_batch_size=64, max_batch_tokens=16384, max_seq_len=512
    )
    with running_server(catalogue, tmp_path, wait=False) as server:
        seen = server.wait_ready()
        assert 503 in seen, seen  # the port was open and answered "not ready" while loading
        assert seen.index(503) < seen.index(200)
        logs = server.logs()
        for name in names:
            assert f"variant {name} ready (warm-up [(32, 512), (64, 256)]" in logs
        variants_seen = httpx.get(f"{server.base_url}/variants").json()["variants"]
        assert [variant["name"] for variant in variants_seen] == names
        assert all(variant["warmup"]["shapes"] == [[32, 512], [64, 256]] for variant in variants_seen)
