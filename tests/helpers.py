"""Test support: a real `xnli-serve serve` process on a free loopback port."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.local_server import LocalServer, free_port, local_server, server_command
from loadtests import scrape

__all__ = ["ServerProcess", "free_port", "metric_value", "running_server", "server_command", "write_catalogue"]


ServerProcess = LocalServer


@contextmanager
def running_server(
    catalogue: Path, log_dir: Path, extra_env: dict[str, str] | None = None, wait: bool = True
) -> Iterator[ServerProcess]:
    """A real server for a test: one torch thread, so several test servers share the 2 cores politely."""
    env = {"XNLI_SERVE_TORCH_THREADS": "1", **(extra_env or {})}
    with local_server(catalogue, log_dir / f"server-{time.monotonic_ns()}.log", env, wait) as server:
        yield server


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
    return scrape.total(scrape.parse(text), name, **labels)
