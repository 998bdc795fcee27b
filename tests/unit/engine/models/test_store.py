"""Start-up checks of checkpoints: every problem is one message naming the variant."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from app.engine.models.catalogue import VariantSpec
from app.engine.models.store import CheckpointError, inspect_checkpoint
from tests.support.checkpoint_layouts import SENTENCEPIECE_MODEL


def copy_checkpoint(demo_store: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "checkpoint"
    shutil.copytree(demo_store / "xlmr-mnli", folder)
    return folder


def spec(path: Path, **options: object) -> VariantSpec:
    return VariantSpec.model_validate({"name": "probe", "path": path, **options})


def test_demo_checkpoint_passes(demo_store: Path) -> None:
    info = inspect_checkpoint(spec(demo_store / "xlmr-hellaswag-mnli", device="cpu"))
    assert info.label_permutation == (2, 1, 0)  # saved in joeddav's order
    assert info.demo is not None
    assert info.demo["untrained"] is True
    assert (info.device, info.dtype, info.pad_token_id) == (torch.device("cpu"), torch.float32, 1)


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


# -- tokenizers: loaded before the port opens, fast only, and every failure says what is missing -------------------


def copy_layout(checkpoint_layouts: dict[str, Path], layout: str, tmp_path: Path) -> Path:
    folder = tmp_path / layout
    shutil.copytree(checkpoint_layouts[layout], folder)
    return folder


@pytest.mark.parametrize("layout", ["a-tokenizer-json", "b-sentencepiece-only"])
def test_preflight_loads_the_fast_tokenizer(checkpoint_layouts: dict[str, Path], layout: str) -> None:
    info = inspect_checkpoint(spec(checkpoint_layouts[layout]))
    assert info.backend_tokenizer.get_vocab_size() == info.config.vocab_size
    assert info.pad_token_id == 1
    assert info.backend_tokenizer.encode("Ab", "Cd").ids[0] == 0  # <s>, from XLM-R's pair template


def test_unreadable_sentencepiece_model(checkpoint_layouts: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_layout(checkpoint_layouts, "b-sentencepiece-only", tmp_path)
    model = folder / SENTENCEPIECE_MODEL
    model.write_bytes(model.read_bytes()[:100])  # a truncated copy
    with pytest.raises(CheckpointError, match=r"variant 'probe': .*sentencepiece.bpe.model is not a readable") as error:
        inspect_checkpoint(spec(folder))
    assert "tiktoken" not in str(error.value)


def test_unreadable_tokenizer_json(checkpoint_layouts: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_layout(checkpoint_layouts, "a-tokenizer-json", tmp_path)
    (folder / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"variant 'probe': cannot load tokenizer from .*a-tokenizer-json: "):
        inspect_checkpoint(spec(folder))


def test_slow_only_tokenizer_is_refused(checkpoint_layouts: dict[str, Path], tmp_path: Path) -> None:
    """transformers has only a Python (SentencePiece) implementation of this class: the batcher needs Rust."""
    folder = copy_layout(checkpoint_layouts, "b-sentencepiece-only", tmp_path)
    shutil.copy(folder / SENTENCEPIECE_MODEL, folder / "spiece.model")
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({**config, "tokenizer_class": "BertGenerationTokenizer"}), encoding="utf-8"
    )
    with pytest.raises(
        CheckpointError, match=r"variant 'probe': .* loads only as a slow Python tokenizer \(BertGenerationTokenizer\)"
    ):
        inspect_checkpoint(spec(folder))


def test_tokenizer_larger_than_the_embedding(checkpoint_layouts: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_layout(checkpoint_layouts, "b-sentencepiece-only", tmp_path)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 500}), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"tokenizer has 1002 tokens but the model's vocab_size is 500"):
        inspect_checkpoint(spec(folder))


# Runs inspect_checkpoint in a fresh interpreter where a package looks uninstalled to transformers.
WITHOUT_PACKAGE = """
import importlib.util, sys
blocked = sys.argv[1]
find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *rest: None if name.startswith(blocked) else find_spec(name, *rest)
from app.engine.models.catalogue import VariantSpec
from app.engine.models.store import CheckpointError, inspect_checkpoint
try:
    inspect_checkpoint(VariantSpec.model_validate({"name": "probe", "path": sys.argv[2]}))
except CheckpointError as error:
    print(error)
"""


@pytest.mark.parametrize("package", ["sentencepiece", "protobuf"])
def test_sentencepiece_conversion_without_its_packages(checkpoint_layouts: dict[str, Path], package: str) -> None:
    """What an install without sentencepiece or protobuf got: transformers' own error named tiktoken."""
    folder = checkpoint_layouts["classic-xlmr"]
    blocked = {"sentencepiece": "sentencepiece", "protobuf": "google.protobuf"}[package]
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_PACKAGE, blocked, str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == (
        f"variant 'probe': cannot convert {folder / SENTENCEPIECE_MODEL} to a fast tokenizer: "
        f"the {package} package is not installed (pip install {package})"
    )
