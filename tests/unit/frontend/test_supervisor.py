"""The supervisor's start-up cleanup of run folders left by a supervisor that was killed (SIGKILL skips its own)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.frontend.supervisor import OWNER_FILE, RUN_DIR_PREFIX, remove_stale_run_dirs


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_only_folders_of_a_dead_supervisor_are_removed(tmp_path: Path) -> None:
    folders = {name: tmp_path / f"{RUN_DIR_PREFIX}{name}" for name in ("dead", "alive", "unowned", "garbled")}
    for folder in folders.values():
        (folder / "metrics").mkdir(parents=True)
    (folders["dead"] / OWNER_FILE).write_text(str(dead_pid()), encoding="ascii")
    (folders["alive"] / OWNER_FILE).write_text(str(os.getpid()), encoding="ascii")
    (folders["garbled"] / OWNER_FILE).write_text("not a pid", encoding="ascii")
    other = tmp_path / "someone-else"
    other.mkdir()
    assert remove_stale_run_dirs(tmp_path) == [folders["dead"]]
    assert not folders["dead"].exists()
    assert all(folders[name].exists() for name in ("alive", "unowned", "garbled"))
    assert other.exists()
