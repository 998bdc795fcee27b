from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, running_server


@pytest.fixture(scope="session")
def server(demo_catalogue: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real `xnli-serve serve` process on a free loopback port, serving the whole tiny demo store (its four torch
    variants and both ONNX deployments). One for the session: every module that only reads from it (predictions,
    metadata, metrics as before/after deltas) shares it, so its start-up and ONNX exports are paid once. A module
    that changes what a server serves, or needs other settings, starts its own with the smallest catalogue."""
    with running_server(demo_catalogue, tmp_path_factory.mktemp("logs")) as process:
        yield process
