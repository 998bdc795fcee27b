"""The export cache shared by several processes: one build, verified reuse, and no pruning under a live user."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app.engine.models import export_cache

# A replica: builds (or reuses) an artifact, serves it for a moment, then checks it is still whole.
REPLICA = """
import json, sys, time
from pathlib import Path
from app.engine.models import export_cache

root, key, start_at = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])

def write(staging):
    (staging / "model.onnx").write_bytes(b"graph" * 1000)
    time.sleep(0.2)  # a slow export: the other replica arrives meanwhile
    (staging / "model.onnx.data").write_bytes(b"weights" * 5000)

while time.time() < start_at:
    time.sleep(0.001)
built = export_cache.build(root, key, {"kind": "float32"}, write, keep_held=True)
time.sleep(0.4)  # serving: the other replica publishes and prunes meanwhile
print(json.dumps({"reused": built.reused, "whole": export_cache.read_manifest(built.folder) is not None}))
"""


def run_replicas(roots_and_keys: list[tuple[Path, str]]) -> list[dict[str, bool]]:
    """Every replica starts at the same instant; their answers in the order given."""
    start_at = time.time() + 1.0
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", REPLICA, str(root), key, str(start_at)], stdout=subprocess.PIPE, text=True
        )
        for root, key in roots_and_keys
    ]
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0
        results.append(json.loads(out))
    return results


ATTEMPTS = 10


def test_two_replicas_on_an_empty_shared_cache_ten_times(tmp_path: Path) -> None:
    """Same exporter: one builds, the other reuses. Different exporters (a rolling upgrade): each keeps its own,
    because neither prunes an export the other still serves. Ten pairs of replicas start at once, each pair on its
    own empty cache."""
    same = [(tmp_path / f"same-{attempt}", "key-a") for attempt in range(ATTEMPTS) for _ in range(2)]
    upgrade = [(tmp_path / f"upgrade-{attempt}", key) for attempt in range(ATTEMPTS) for key in ("key-old", "key-new")]
    results = run_replicas(same + upgrade)
    for attempt in range(ATTEMPTS):
        pair = results[2 * attempt : 2 * attempt + 2]
        assert sorted(result["reused"] for result in pair) == [False, True], (attempt, pair)
        assert all(result["whole"] for result in pair), (attempt, pair)
        upgraded = results[2 * ATTEMPTS + 2 * attempt : 2 * ATTEMPTS + 2 * attempt + 2]
        assert upgraded == [{"reused": False, "whole": True}] * 2, (attempt, upgraded)


def write_artifact(staging: Path) -> None:
    (staging / "model.onnx").write_bytes(b"x" * 100)


def test_stale_artifact_is_pruned_once_nobody_serves_it(tmp_path: Path) -> None:
    old = export_cache.build(tmp_path, "old", {"kind": "float32"}, write_artifact)
    export_cache.hold(old.folder)
    export_cache.build(tmp_path, "new", {"kind": "float32"}, write_artifact)
    assert old.folder.is_dir()  # this process still serves it
    export_cache.release(old.folder)
    export_cache.build(tmp_path, "newer", {"kind": "float32"}, write_artifact)
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.startswith(".")) == ["newer"]


@pytest.mark.parametrize("damage", ["truncated", "deleted", "manifest-without-files"])
def test_a_damaged_artifact_is_rebuilt_not_reused(tmp_path: Path, damage: str) -> None:
    first = export_cache.build(tmp_path, "key", {"kind": "float32"}, write_artifact)
    model = first.folder / "model.onnx"
    manifest_path = first.folder / export_cache.MANIFEST_FILE
    if damage == "truncated":
        model.write_bytes(b"x" * 10)
    elif damage == "deleted":
        model.unlink()
    else:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        del manifest["files"]
        manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    again = export_cache.build(tmp_path, "key", {"kind": "float32"}, write_artifact)
    assert not again.reused
    assert model.stat().st_size == 100
    assert json.loads(manifest_path.read_text(encoding="utf-8"))["files"] == {"model.onnx": 100}


def test_leftovers_of_a_crashed_build_are_cleaned(tmp_path: Path) -> None:
    crashed = tmp_path / ".key-abc123"  # staging folder of a process that died mid-export
    crashed.mkdir()
    (crashed / "model.onnx").write_bytes(b"half")
    recent = tmp_path / ".key-def456"  # may belong to a live builder of older code, which takes no lock
    recent.mkdir()
    old = time.time() - 2 * export_cache.LEFTOVER_AGE_S
    os.utime(crashed, (old, old))
    export_cache.build(tmp_path, "key", {"kind": "float32"}, write_artifact)
    assert not crashed.exists()
    assert recent.exists()


def test_holding_and_releasing_never_wait_for_a_running_export(tmp_path: Path) -> None:
    """release() runs on the event loop when a variant is unloaded: a minute-long export must not block it."""
    done = export_cache.build(tmp_path / "a", "key", {"kind": "float32"}, write_artifact)
    exporting = threading.Event()
    finish = threading.Event()

    def slow_write(staging: Path) -> None:
        exporting.set()
        finish.wait(10)
        write_artifact(staging)

    builder = threading.Thread(target=export_cache.build, args=(tmp_path / "b", "key", {"kind": "float32"}, slow_write))
    builder.start()
    try:
        assert exporting.wait(10)
        started = time.perf_counter()
        export_cache.hold(done.folder)
        export_cache.release(done.folder)
        assert time.perf_counter() - started < 1.0
    finally:
        finish.set()
        builder.join(10)
