"""ONNX export cache: reuse, int8 derived from the shared float32 export, rebuild on change, crash safety."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from app.engine.backends import onnx_export
from app.engine.backends.onnx_export import ensure_export
from app.engine.models.export_cache import MANIFEST_FILE
from app.engine.models.store import checkpoint_fingerprint

# Each test exports the tiny checkpoint to ONNX (10-20 s apiece): make test-slow, after make test in CI.
pytestmark = pytest.mark.slow


class CountingLoader:
    """Hands the exporter the float32 model and counts how often an export actually ran."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return AutoModelForSequenceClassification.from_pretrained(self.folder, local_files_only=True).eval()


def cache_folders(checkpoint: Path) -> dict[str, dict[str, Any]]:
    root = checkpoint / onnx_export.CACHE_FOLDER
    return {
        folder.name: json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        for folder in root.iterdir()
        if (folder / MANIFEST_FILE).is_file()
    }


def export(checkpoint: Path, quantization: Any = "none") -> tuple[onnx_export.OnnxArtifact, CountingLoader]:
    loader = CountingLoader(checkpoint)
    artifact = ensure_export(checkpoint, checkpoint / onnx_export.CACHE_FOLDER, loader, quantization)
    return artifact, loader


def test_second_start_reuses_the_export(checkpoint: Path) -> None:
    artifact, loader = export(checkpoint)
    assert artifact.reused
    assert loader.calls == 0  # not even the torch model was handed over
    manifest = cache_folders(checkpoint)[artifact.key]
    assert manifest["checkpoint_sha256"] == checkpoint_fingerprint(checkpoint)
    assert manifest["versions"]["torch"] == torch.__version__


def test_int8_is_derived_from_the_shared_float32_export(checkpoint: Path) -> None:
    int8, loader = export(checkpoint, "int8-dynamic")
    assert not int8.reused
    assert loader.calls == 0  # quantized from the cached float32 export, no second torch export
    kinds = sorted(manifest["kind"] for manifest in cache_folders(checkpoint).values())
    assert kinds == ["float32", "int8-dynamic"]
    again, _ = export(checkpoint, "int8-dynamic")
    assert again.reused
    assert again.key == int8.key
    assert onnx.load(str(int8.path), load_external_data=False).graph.node  # a readable graph
    ops = {node.op_type for node in onnx.load(str(int8.path), load_external_data=False).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops


def test_changed_checkpoint_is_exported_again_and_the_stale_export_removed(checkpoint: Path) -> None:
    before, _ = export(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, local_files_only=True)
    with torch.no_grad():
        model.classifier.out_proj.bias.add_(0.5)
    model.save_pretrained(checkpoint)

    after, loader = export(checkpoint)
    assert (after.reused, loader.calls) == (False, 1)
    assert after.key != before.key
    assert list(cache_folders(checkpoint)) == [after.key]


def test_new_exporter_version_means_a_new_export(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before, _ = export(checkpoint)
    monkeypatch.setattr(onnx_export, "EXPORT_RECIPE", onnx_export.EXPORT_RECIPE + 1)
    after, loader = export(checkpoint)
    assert (after.reused, loader.calls) == (False, 1)
    assert after.key != before.key


def test_unfinished_export_is_not_trusted(checkpoint: Path) -> None:
    artifact, _ = export(checkpoint)
    (artifact.path.parent / MANIFEST_FILE).unlink()  # as if the process died before publishing
    rebuilt, loader = export(checkpoint)
    assert (rebuilt.reused, loader.calls) == (False, 1)
    assert (rebuilt.path.parent / MANIFEST_FILE).is_file()


def test_failed_export_leaves_no_folder_behind(checkpoint: Path) -> None:
    shutil.rmtree(checkpoint / onnx_export.CACHE_FOLDER)

    def broken() -> Any:
        raise RuntimeError("no model today")

    with pytest.raises(onnx_export.ExportError, match=r"ONNX export of .* failed: RuntimeError: no model today"):
        ensure_export(checkpoint, checkpoint / onnx_export.CACHE_FOLDER, broken, "none")
    assert list((checkpoint / onnx_export.CACHE_FOLDER).iterdir()) == []
