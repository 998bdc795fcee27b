"""Test support: a real `xnli-serve serve` process on a free loopback port."""

from __future__ import annotations

import json
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
class ServerProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 90.0, headers: dict[str, str] | None = None) -> list[int]:
        """Poll /health/ready until 200; returns every status seen (connection failures as 0)."""
        seen: list[int] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.logs()}")
            try:
                status = httpx.get(f"{self.base_url}/health/ready", timeout=2.0, headers=headers).status_code
            except httpx.TransportError:
                status = 0
            seen.append(status)
            if status == 200:
                return seen
            time.sleep(0.005)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.logs()}")


def server_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "app", *args]


@contextmanager
def running_server(
    catalogue: Path, log_dir: Path, extra_env: dict[str, str] | None = None, wait: bool = True
) -> Iterator[ServerProcess]:
    port = free_port()
    env = {
        **os.environ,
        "XNLI_SERVE_CATALOGUE": str(catalogue),
        "XNLI_SERVE_HOST": "127.0.0.1",
        "XNLI_SERVE_PORT": str(port),
        "XNLI_SERVE_TORCH_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(server_command("serve"), env=env, stdout=log_file, stderr=subprocess.STDOUT)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        if wait:
            server.wait_ready()
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {_toml_value(item)}" for key, item in value.items()) + " }"
    return json.dumps(str(value))


def write_catalogue(path: Path, store: Path, variants: list[dict[str, object]], **defaults: object) -> Path:
    """A catalogue whose variants point at checkpoints of ``store``; each dict is one [[variant]] table."""
    lines = ["[defaults]", *(f"{key} = {_toml_value(value)}" for key, value in defaults.items())]
    for variant in variants:
        table = {"path": str(store / str(variant.get("checkpoint", "xlmr-mnli"))), **variant}
        table.pop("checkpoint", None)
        lines += ["", "[[variant]]", *(f"{key} = {_toml_value(value)}" for key, value in table.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` in a Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                total += sample.value
    return total
