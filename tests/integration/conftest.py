from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import ServerProcess, running_server, write_catalogue

API_KEY = "first-key-0123456789"  # `secured_server`'s key from XNLI_SERVE_API_KEYS
FILE_KEY = "second-key-abcdefghij"  # ... and the one from its XNLI_SERVE_API_KEY_FILE
CORS_ORIGIN = "https://dashboards.example"  # the only origin `secured_server` allows
SECURED_VARIANTS = ("xlmr-mnli", "xlmr-squad-mnli")  # what `secured_server` serves


@pytest.fixture(scope="session")
def server(demo_catalogue: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real `xnli-serve serve` process on a free loopback port, serving the whole tiny demo store (its four torch
    variants and both ONNX deployments). One for the session: every module that only reads from it (predictions,
    metadata, metrics as before/after deltas) shares it, so its start-up and ONNX exports are paid once. A module
    that changes what a server serves, or needs other settings, starts its own with the smallest catalogue."""
    with running_server(demo_catalogue, tmp_path_factory.mktemp("logs")) as process:
        yield process


@pytest.fixture(scope="session")
def secured_server(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Two tiny torch variants (SECURED_VARIANTS, small batches: quick to warm up) behind API keys, one from the
    environment and one from a key file, with CORS for one origin: shared by the modules that call a keyed service
    (security, `evaluate --url`, Locust and compare, the browser pages)."""
    folder = tmp_path_factory.mktemp("secured")
    catalogue = write_catalogue(
        folder / "variants.toml",
        demo_store,
        [{"name": name, "checkpoint": name} for name in SECURED_VARIANTS],
        max_batch_size=8,
        max_seq_len=128,
    )
    key_file = folder / "keys.txt"
    key_file.write_text(f"# operators\n{FILE_KEY}\n\n", encoding="utf-8")
    env = {
        "XNLI_SERVE_API_KEYS": API_KEY,
        "XNLI_SERVE_API_KEY_FILE": str(key_file),
        "XNLI_SERVE_CORS_ORIGINS": CORS_ORIGIN,
    }
    with running_server(catalogue, folder, extra_env=env) as process:
        yield process
