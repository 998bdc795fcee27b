"""Start-up checks of checkpoints: every problem is one message naming the variant."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from app.engine.catalogue import VariantSpec
from app.engine.model_store import CheckpointError, inspect_checkpoint, load_checkpoint, resolve_dtype


def copy_checkpoint(demo_store: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "checkpoint"
    shutil.copytree(demo_store / "xlmr-mnli", folder)
    return folder


def spec(path: Path, **options: object) -> VariantSpec:
    return VariantSpec.model_validate({"name": "probe", "path": path, **options})


def test_demo_checkpoint_passes_and_loads(demo_store: Path) -> None:
    info = inspect_checkpoint(spec(demo_store / "xlmr-hellaswag-mnli", device="cpu"))
    assert info.label_permutation == (2, 1, 0)  # saved in joeddav's order
    assert info.demo is not None
    assert info.demo["untrained"] is True
    loaded = load_checkpoint(info)
    assert loaded.pad_token_id == 1
    assert loaded.attention == "sdpa"
    assert not loaded.model.training
    assert loaded.parameters > 0


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"variant 'probe': checkpoint folder .* does not exist"):
        inspect_checkpoint(spec(tmp_path / "absent"))


def test_folder_without_config(demo_store: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(demo_store, tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"variant 'probe': .* has no config.json"):
        inspect_checkpoint(spec(folder))


def test_folder_without_tokenizer(demo_store: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(demo_store, tmp_path)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"variant 'probe': .* has no tokenizer"):
        inspect_checkpoint(spec(folder))


def test_unreadable_config(demo_store: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(demo_store, tmp_path)
    (folder / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="variant 'probe': cannot read"):
        inspect_checkpoint(spec(folder))


def test_generic_labels_cannot_be_mapped(demo_store: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(demo_store, tmp_path)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["id2label"] = {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}
    config["label2id"] = {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(CheckpointError, match="variant 'probe': labels cannot be mapped by name"):
        inspect_checkpoint(spec(folder))


def test_corrupt_weights_fail_at_load(demo_store: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(demo_store, tmp_path)
    (folder / "model.safetensors").write_bytes(b"garbage")
    info = inspect_checkpoint(spec(folder))
    with pytest.raises(CheckpointError, match="variant 'probe': cannot load model weights"):
        load_checkpoint(info)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
def test_cuda_requested_without_gpu(demo_store: Path) -> None:
    with pytest.raises(CheckpointError, match="variant 'probe': device 'cuda:0' requested but CUDA is not available"):
        inspect_checkpoint(spec(demo_store / "xlmr-mnli", device="cuda:0"))


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
    assert resolve_dtype(spec(tmp_path, dtype=dtype), torch.device(device)) == expected
