"""Fixtures shared by unit and integration tests: a tiny demo model store built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.demo.build_store import build_demo_store

REPO_ROOT = Path(__file__).resolve().parent.parent
XNLI_DIR = REPO_ROOT.parent / "shared" / "data" / "xnli"


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
