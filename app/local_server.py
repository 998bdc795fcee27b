"""Start a real `xnli-serve serve` process on a free loopback port: for load tests, benchmarks and tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LocalServer:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    grpc_target: str | None = None  # host:port of its gRPC server (issue #26); None when XNLI_SERVE_GRPC_ENABLED=false

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 600.0, headers: dict[str, str] | None = None) -> list[int]:
        """Poll /health/ready until 200; returns every status seen (connection failures as 0)."""
        seen: list[int] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"xnli-serve exited with {self.process.returncode}:\n{self.logs()[-4000:]}")
            try:
                status = httpx.get(f"{self.base_url}/health/ready", timeout=2.0, headers=headers).status_code
            except httpx.TransportError:
                status = 0
            seen.append(status)
            if status == 200:
                return seen
            time.sleep(0.005 if len(seen) < 2000 else 0.2)
        raise TimeoutError(f"xnli-serve not ready after {timeout}s:\n{self.logs()[-4000:]}")


def server_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "app", *args]


@contextmanager
def local_server(
    catalogue: Path, log_path: Path, extra_env: dict[str, str] | None = None, wait: bool = True
) -> Iterator[LocalServer]:
    """The process runs with the caller's environment plus ``extra_env``; it is stopped (SIGTERM) on exit."""
    port = free_port()
    env = {
        **os.environ,
        "XNLI_SERVE_CATALOGUE": str(catalogue),
        "XNLI_SERVE_HOST": "127.0.0.1",
        "XNLI_SERVE_PORT": str(port),
        "XNLI_SERVE_GRPC_PORT": str(free_port()),  # gRPC (issue #26): a free port too, never the shared 8001
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    grpc_enabled = env.get("XNLI_SERVE_GRPC_ENABLED", "true").strip().lower() not in ("0", "false", "no", "off")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(server_command("serve"), env=env, stdout=log_file, stderr=subprocess.STDOUT)
    grpc_target = f"127.0.0.1:{env['XNLI_SERVE_GRPC_PORT']}" if grpc_enabled else None
    server = LocalServer(process, f"http://127.0.0.1:{port}", log_path, grpc_target)
    try:
        if wait:
            server.wait_ready()
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
