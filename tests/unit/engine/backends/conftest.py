"""Fixtures of the backend tests: a demo checkpoint with its float32 ONNX export, exported once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification

from app.engine.backends.onnx_export import CACHE_FOLDER, OnnxArtifact, ensure_export


def float32_export(folder: Path) -> OnnxArtifact:
    def load_model() -> object:
        return AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).eval()

    return ensure_export(folder, folder / CACHE_FOLDER, load_model, "none")


@pytest.fixture(scope="session")
def exported(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of a demo checkpoint (label order differs from the service's) with its float32 export."""
    folder = tmp_path_factory.mktemp("onnx") / "checkpoint"
    shutil.copytree(demo_store / "xlmr-hellaswag-mnli", folder)
    float32_export(folder)
    return folder


@pytest.fixture
def checkpoint(exported: Path, tmp_path: Path) -> Path:
    """A copy of the exported checkpoint, cache included, that a test may change."""
    folder = tmp_path / "checkpoint"
    shutil.copytree(exported, folder)
    return folder


@pytest.fixture
def artifact(checkpoint: Path) -> OnnxArtifact:
    """The float32 export of ``checkpoint`` (reused from the copied cache)."""
    return float32_export(checkpoint)
