"""Test support: a real `xnli-serve serve` process on a free loopback port."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from app.engine.errors import (
    DeadlineExceededError,
    DeadlineTooShortError,
    DrainingError,
    EngineError,
    InferenceError,
    InputTooLongError,
    OverloadedError,
    RepositoryBusyError,
    RequestTooLargeError,
    UnknownVariantError,
    VariantLoadError,
    VariantNotReadyError,
)
from app.local_server import LocalServer, free_port, local_server, server_command
from loadtests import scrape

__all__ = [
    "ENGINE_ERRORS",
    "REPOSITORY_ERRORS",
    "Outcome",
    "ServerProcess",
    "free_port",
    "metric_value",
    "predict_until_refused",
    "running_server",
    "server_command",
    "write_catalogue",
]


ServerProcess = LocalServer


@contextmanager
def running_server(
    catalogue: Path, log_dir: Path, extra_env: dict[str, str] | None = None, wait: bool = True
) -> Iterator[ServerProcess]:
    """A real server for a test: one torch thread, so several test servers share the 2 cores politely."""
    env = {"XNLI_SERVE_TORCH_THREADS": "1", **(extra_env or {})}
    with local_server(catalogue, log_dir / f"server-{time.monotonic_ns()}.log", env, wait) as server:
        yield server


# One of each error a prediction may raise in the engine, with the attributes the API reads.
ENGINE_ERRORS: list[EngineError] = [
    UnknownVariantError("nope", ["alpha", "beta"]),
    VariantNotReadyError("alpha", "loading"),
    InputTooLongError(3, 700, 512, "pair 3 has 700 tokens; max_seq_len is 512"),
    OverloadedError("the queue is full", retry_after_s=2.4),
    RequestTooLargeError("more pairs than the queue holds", limit=64),
    DeadlineTooShortError("the deadline is shorter than one forward pass", minimum_s=0.0123),
    DeadlineExceededError("no answer within 0.100s"),
    DrainingError("shutting down"),
    InferenceError("the batch failed"),
]
# ... and those only the repository calls raise (load, unload).
REPOSITORY_ERRORS: list[EngineError] = [
    VariantLoadError("alpha", "bad labels", server_fault=True),
    RepositoryBusyError("alpha is being loaded"),
]


# One /predict call under a drain test's load: (sent at, answered at, status or "503 <error type>" or transport error).
Outcome = tuple[float, float, int | str]


async def predict_until_refused(http: httpx.AsyncClient, body: dict[str, Any], sent: list[Outcome]) -> None:
    """POST ``body`` to /predict back to back, recording each outcome in ``sent``, until one is not a 200."""
    while True:
        started = time.perf_counter()
        try:
            response = await http.post("/predict", json=body)
            outcome: int | str = response.status_code
            if response.status_code != 200:
                outcome = f"{response.status_code} {response.json()['error']['type']}"
        except httpx.TransportError as error:
            outcome = type(error).__name__
        sent.append((started, time.perf_counter(), outcome))
        if outcome != 200:
            return


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
