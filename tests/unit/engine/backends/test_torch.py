"""The torch backend: offline loading, precision and device choice (GPU paths checked with CUDA faked absent or
present, since the machine that runs the suite may have no GPU)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from app.engine.backends import get_backend
from app.engine.backends.torch import load_checkpoint
from app.engine.models.catalogue import VariantSpec
from app.engine.models.store import CheckpointError, inspect_checkpoint

TORCH = get_backend("torch")


def spec(path: Path, **options: object) -> VariantSpec:
    return VariantSpec.model_validate({"name": "probe", "path": path, **options})


def test_the_demo_checkpoint_loads_offline_for_inference(demo_store: Path) -> None:
    loaded = load_checkpoint(inspect_checkpoint(spec(demo_store / "xlmr-hellaswag-mnli", device="cpu")))
    assert loaded.pad_token_id == 1
    assert loaded.attention == "sdpa"
    assert not loaded.model.training
    assert loaded.parameters > 0
    assert next(loaded.model.parameters()).dtype == torch.float32


def test_corrupt_weights_fail_at_load(demo_store: Path, tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint"
    shutil.copytree(demo_store / "xlmr-mnli", folder)
    (folder / "model.safetensors").write_bytes(b"garbage")
    info = inspect_checkpoint(spec(folder))
    with pytest.raises(CheckpointError, match="variant 'probe': cannot load model weights"):
        load_checkpoint(info)


@pytest.mark.parametrize(
    ("device", "dtype", "expected"),
    [
        ("cpu", "auto", torch.float32),
        ("cuda", "auto", torch.float16),
        ("cpu", "bfloat16", torch.bfloat16),
        ("cuda", "float32", torch.float32),
    ],
)
def test_dtype_resolution(device: str, dtype: str, expected: torch.dtype, tmp_path: Path) -> None:
    assert TORCH.resolve_dtype(spec(tmp_path, dtype=dtype), torch.device(device)) == expected


@pytest.mark.parametrize(
    ("requested", "gpus", "expected"),
    [("auto", 0, "cpu"), ("auto", 1, "cuda"), ("cpu", 2, "cpu"), ("cuda", 1, "cuda:0"), ("cuda:1", 2, "cuda:1")],
)
def test_device_choice(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, requested: str, gpus: int, expected: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert TORCH.resolve_device(spec(tmp_path, device=requested)) == torch.device(expected)


@pytest.mark.parametrize(
    ("requested", "gpus", "problem"),
    [
        ("cuda:0", 0, "device 'cuda:0' requested but CUDA is not available here"),
        ("cuda:2", 2, r"device 'cuda:2' requested but only 2 GPU\(s\) are visible"),
    ],
)
def test_unusable_device_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, requested: str, gpus: int, problem: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    with pytest.raises(CheckpointError, match=f"variant 'probe': {problem}"):
        TORCH.resolve_device(spec(tmp_path, device=requested))
