"""Fixtures shared by unit and integration tests: a tiny demo model store built once per session; the markers that
let `make test-unit` run only the tests that load no checkpoint and open no socket (and prove the latter)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from app.demo.build_store import build_demo_store

REPO_ROOT = Path(__file__).resolve().parent.parent
XNLI_DIR = REPO_ROOT.parent / "shared" / "data" / "xnli"

CHECKPOINT_FIXTURES = frozenset({"demo_store", "demo_catalogue", "checkpoint_layouts"})
SOCKET_FOLDERS = ("tests/integration/", "tests/unit/multiprocess/")  # real servers; ZeroMQ between processes
# Statistical calibrations: thousands of simulated load tests each, pure CPU: make test-slow.
SIMULATION_MODULES = ("tests/unit/loadtests/test_calibration.py", "tests/unit/loadtests/test_slo.py")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--forbid-sockets",
        action="store_true",
        help="fail any test that binds or connects an internet socket (make test-unit: those must be marked sockets)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark what a test needs from its fixtures and folder, so no list of test names goes stale."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & CHECKPOINT_FIXTURES:
            item.add_marker(pytest.mark.checkpoints)
        where = item.path.relative_to(REPO_ROOT).as_posix()
        if where.startswith(SOCKET_FOLDERS):
            item.add_marker(pytest.mark.sockets)
        if where in SIMULATION_MODULES:
            item.add_marker(pytest.mark.simulation)


@pytest.fixture(autouse=True)
def _forbid_sockets(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --forbid-sockets, an unmarked test that binds or connects an AF_INET/AF_INET6 socket fails at once."""
    if request.config.getoption("--forbid-sockets") and request.node.get_closest_marker("sockets") is None:
        for method in ("bind", "connect", "connect_ex"):
            original = getattr(socket.socket, method)

            def refuse(self: socket.socket, *args: Any, _original: Any = original, _method: str = method) -> Any:
                if self.family in (socket.AF_INET, socket.AF_INET6):
                    raise RuntimeError(f"socket.{_method} in a test not marked `sockets` (make test-unit opens none)")
                return _original(self, *args)

            monkeypatch.setattr(socket.socket, method, refuse)


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained demo store (four variants) and its catalogue, shared read-only by every test."""
    store = tmp_path_factory.mktemp("model_store")
    build_demo_store(store, size="tiny")
    return store


@pytest.fixture(scope="session")
def demo_catalogue(demo_store: Path) -> Path:
    return demo_store / "variants.toml"


@pytest.fixture(scope="session")
def xnli_dir() -> Path:
    if not XNLI_DIR.is_dir():
        message = f"XNLI dev set not found at {XNLI_DIR} (it sits beside the checkout in CI)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI always has it: a missing copy must not turn tests into silent skips
        pytest.skip(message)
    return XNLI_DIR


@pytest.fixture(scope="session")
def checkpoint_layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny checkpoint in every layout of tests/support/checkpoint_layouts.py (SentencePiece-only among them)."""
    from tests.support.checkpoint_layouts import build_layouts

    return build_layouts(tmp_path_factory.mktemp("checkpoint_layouts"))
