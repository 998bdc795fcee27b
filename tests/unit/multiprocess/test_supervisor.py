"""The supervisor's start-up cleanup of run folders left by a supervisor that was killed (SIGKILL skips its own), and
its answer to the connections left queued on the listening socket when the front ends have gone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.api.error_shapes import NATIVE, OIP, ErrorShape
from app.api.errors import error_response, from_engine
from app.api.routes import open_inference
from app.engine.errors import DrainingError
from app.multiprocess.supervisor import OIP_PREFIX, OWNER_FILE, RUN_DIR_PREFIX, draining_answer, remove_stale_run_dirs

DRAINING_MESSAGE = "the service is shutting down and takes no new requests"  # the app's (app.engine.gate)


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


@pytest.mark.parametrize(
    ("request_line", "shape"),
    [
        (b"POST /predict HTTP/1.1", NATIVE),
        (b"GET /health/ready HTTP/1.1", NATIVE),
        (b"POST /v2/models/fast/infer?x=1 HTTP/1.1", OIP),
        (b"GET /v2 HTTP/1.1", OIP),
        (b"GET /v2x HTTP/1.1", NATIVE),
        (b"", NATIVE),  # no head at all (a client that never sent one)
    ],
)
def test_the_supervisors_draining_answer_is_the_services(request_line: bytes, shape: ErrorShape) -> None:
    """What the supervisor answers a queued connection reads as the app's own 503 draining for that path."""
    raw = draining_answer(request_line + b"\r\nhost: x\r\n\r\n" if request_line else b"")
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *header_lines = head.decode("ascii").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    app_answer = error_response(from_engine(DrainingError(DRAINING_MESSAGE)), shape)
    assert status == "HTTP/1.1 503 Service Unavailable"
    assert body == app_answer.body
    assert int(headers["content-length"]) == len(body)
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert headers["retry-after"] == app_answer.headers["retry-after"]
    assert OIP_PREFIX.decode() == open_inference.PREFIX
