from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, running_server


@pytest.fixture(scope="module")
def server(demo_catalogue: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real `xnli-serve serve` process on a free loopback port, serving the tiny demo store."""
    with running_server(demo_catalogue, tmp_path_factory.mktemp("logs")) as process:
        yield process
