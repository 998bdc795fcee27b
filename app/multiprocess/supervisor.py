"""``xnli-serve serve`` with ``XNLI_SERVE_FRONTEND_PROCESSES`` > 1: bind the port, start the engine process and the
front ends, keep them running, and stop them in an order that loses no accepted request.

* A front end that dies is started again (the others keep serving on the shared socket meanwhile).
* If the engine process dies, the front ends turn unready within ``XNLI_SERVE_ENGINE_SILENCE_S`` and fail what they wait
  on with 503; the supervisor stops them and exits 1, so the orchestrator restarts the whole service.
* SIGTERM: the front ends drain first (readiness 503, new requests 503, accepted ones finish, since the engine still
  answers), then the engine process drains and stops; exit 0. SIGINT: everything stops without waiting.
* The supervisor holds the listening socket longest: once every front end has exited (after SIGTERM, or after the
  engine process died), it stops new handshakes, answers each connection the kernel had queued meanwhile with
  503 draining and only then closes it (app.api.listener_drain): nothing is reset after its request was sent.
* The children run in process groups of their own and hear signals only from the supervisor, in that order: a
  signal to the supervisor's whole group (systemd's default KillMode, ``kill -TERM -PGID``, Ctrl-C in a terminal)
  would otherwise drain the engine process while the front ends still send it accepted requests, and give each
  front end a second SIGTERM (which cuts its drain). A child whose supervisor is gone stops by itself.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import orjson

from app.api import listener_drain
from app.api.error_shapes import NATIVE, OIP, ErrorShape
from app.engine.gate import draining_error
from app.settings import Settings

log = logging.getLogger(__name__)

POLL_S = 0.1
RESTART_PAUSE_S = 1.0  # a front end that keeps dying is restarted at most this often
EXIT_MARGIN_S = 10.0  # beyond the drain timeout, before a process that does not exit is killed


def exit_now(code: int) -> None:
    """Exit once the work is done, without the interpreter's final garbage collection: with torch and
    transformers imported it takes seconds, which would stretch every drain."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


RUN_DIR_PREFIX = "xnli-serve-"
OWNER_FILE = "supervisor.pid"


def remove_stale_run_dirs(root: Path) -> list[Path]:
    """Remove the run folders under ``root`` whose supervisor is gone (it was killed before it could clean up: its
    children stop by themselves once it is gone); those of a running supervisor, or of another user, stay."""
    removed = []
    for folder in root.glob(f"{RUN_DIR_PREFIX}*"):
        try:
            if folder.stat().st_uid != os.getuid():
                continue
            pid = int((folder / OWNER_FILE).read_text(encoding="ascii"))
        except (OSError, ValueError):
            continue  # not ours to judge (or being created right now)
        try:
            os.kill(pid, 0)
            continue  # its supervisor still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # a live process of another user has that pid
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


OIP_PREFIX = b"/v2"  # the Open Inference Protocol's namespace (app.api.routes.open_inference.PREFIX): its error shape


def draining_answer(head: bytes) -> bytes:
    """503 draining for a connection the front ends left queued, as the service answers it: the error shape of the
    protocol the path belongs to, ``Retry-After: 1`` and ``Connection: close``."""
    parts = head.split(b" ", 2)
    path = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b""
    shape: ErrorShape = OIP if path == OIP_PREFIX or path.startswith(OIP_PREFIX + b"/") else NATIVE
    body = orjson.dumps(shape.body("draining", str(draining_error())))
    return (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n".encode("ascii")
        + b"retry-after: 1\r\nconnection: close\r\n\r\n"
        + body
    )


def bind_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener


class Supervisor:
    def __init__(self, settings: Settings, environment: dict[str, str]) -> None:
        self.settings = settings
        self.count = settings.frontend_processes
        for stale in remove_stale_run_dirs(Path(tempfile.gettempdir())):
            log.info("removed %s, left by a supervisor that was killed", stale)
        self.run_dir = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX))
        (self.run_dir / OWNER_FILE).write_text(str(os.getpid()), encoding="ascii")
        self.metrics_dir = self.run_dir / "metrics"
        self.metrics_dir.mkdir()
        base = {key: value for key, value in environment.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
        self.engine_env = base
        self.front_env = {**base, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        self.listener = bind_listener(settings.host, settings.port)
        self.engine: subprocess.Popen[bytes] | None = None
        self.fronts: list[subprocess.Popen[bytes] | None] = [None] * self.count
        self.started_at = [0.0] * self.count
        self.stop_signal: int | None = None
        self.signalled: set[tuple[int, int]] = set()  # (pid, signal) already sent to a front end

    def _start_front(self, index: int) -> None:
        fd = self.listener.fileno()
        command = [sys.executable, "-m", "app.multiprocess.front_end", str(self.run_dir), str(fd)]
        self.fronts[index] = subprocess.Popen(command, env=self.front_env, pass_fds=(fd,), process_group=0)
        self.started_at[index] = time.monotonic()
        log.info("front end %d started (pid %d)", index, self.fronts[index].pid)  # type: ignore[union-attr]

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        """Pass the signal on to the front ends at once (readiness turns 503 now), once per kind of signal."""
        if sig == self.stop_signal or (self.stop_signal == signal.SIGINT):
            return
        self.stop_signal = sig
        self._signal_fronts(sig)

    def _signal_fronts(self, sig: int) -> None:
        """Send ``sig`` to every running front end that has not had it (a second SIGTERM would cut its drain)."""
        for front in self.fronts:
            if front is not None and front.poll() is None and (front.pid, sig) not in self.signalled:
                self.signalled.add((front.pid, sig))
                front.send_signal(sig)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        command = [sys.executable, "-m", "app.multiprocess.engine_process", str(self.run_dir)]
        self.engine = subprocess.Popen(command, env=self.engine_env, process_group=0)
        log.info("engine process started (pid %d); %d front ends on %s:%d", self.engine.pid, self.count,
                 self.settings.host, self.settings.port)  # fmt: skip
        for index in range(self.count):
            self._start_front(index)
        try:
            return self._watch()
        finally:
            self.listener.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _watch(self) -> int:
        assert self.engine is not None
        while self.stop_signal is None:
            if (code := self.engine.poll()) is not None:
                log.error("the engine process exited with %s: stopping the front ends", code)
                self._stop_fronts(signal.SIGTERM)
                self._answer_backlog()
                return code if code > 0 else 1
            for index, front in enumerate(self.fronts):
                if front is not None and front.poll() is not None:
                    log.error("front end %d (pid %d) exited with %s", index, front.pid, front.returncode)
                    self.fronts[index] = None
                if self.fronts[index] is None and time.monotonic() - self.started_at[index] >= RESTART_PAUSE_S:
                    self._start_front(index)
            time.sleep(POLL_S)
        sig = self.stop_signal
        log.info("%s: stopping the front ends, then the engine process", signal.Signals(sig).name)
        fronts_ok = self._stop_fronts(sig)
        if sig == signal.SIGINT:
            self.listener.close()
        else:
            self._answer_backlog()
        engine_ok = _stop(self.engine, sig, self.settings.drain_timeout_s + EXIT_MARGIN_S)
        if sig == signal.SIGINT:
            return 130
        return 0 if fronts_ok and engine_ok else 1

    def _answer_backlog(self) -> None:
        """Every front end has exited: answer what the kernel queued on the listening socket since, then close it."""
        report = listener_drain.answer_backlog(self.listener, draining_answer)
        if not report.filtered:
            log.warning("new connections could not be stopped before the listening socket closed (not Linux?)")

    def _stop_fronts(self, sig: int) -> bool:
        running = [front for front in self.fronts if front is not None]
        self._signal_fronts(sig)
        timeout = self.settings.drain_timeout_s + EXIT_MARGIN_S
        return all([_stop(front, None, timeout) for front in running])


def _stop(process: subprocess.Popen[bytes], sig: int | None, timeout: float) -> bool:
    """Signal ``process`` (unless ``sig`` is None), wait up to ``timeout``, kill it past that; True if it exited 0."""
    if sig is not None and process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        log.error("pid %d did not exit within %.0fs: killed", process.pid, timeout)
        process.kill()
        process.wait()
    return process.returncode == 0


def run_supervisor(settings: Settings, overrides: dict[str, str]) -> int:
    """Serve with ``settings.frontend_processes`` front ends; ``overrides`` are XNLI_SERVE_* variables from the
    command line, for the children to read the same settings."""
    from app.tracing.setup import TracingConfigError, check

    try:  # tracing (issue #27): a bad OTEL_* value stops the start here, before any child is started
        check(os.environ)
    except TracingConfigError as error:
        log.error("%s", error)
        return 2
    return Supervisor(settings, {**os.environ, **overrides}).run()
