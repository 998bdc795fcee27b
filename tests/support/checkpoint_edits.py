"""Changed copies of a demo checkpoint, for model repository tests: a reload must serve what the folder holds now."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
CLASSIFIER_BIAS = "classifier.out_proj.bias"
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"


def _copy(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)


def _save(weights: dict[str, torch.Tensor], folder: Path) -> None:
    """Write beside, then rename: a server reading the folder never sees half a file."""
    partial = folder / f"{WEIGHTS}.partial"
    save_file(weights, str(partial), metadata={"format": "pt"})
    partial.replace(folder / WEIGHTS)


def _key(weights: dict[str, torch.Tensor], suffix: str) -> str:
    return next(name for name in weights if name.endswith(suffix))


def shift_classifier_bias(folder: Path, shift: tuple[float, float, float]) -> None:
    """Add ``shift`` to the classifier's output bias (model order), in place: same shape, other answers."""
    weights = load_file(str(folder / WEIGHTS))
    key = _key(weights, CLASSIFIER_BIAS)
    weights[key] = weights[key] + torch.tensor(shift, dtype=weights[key].dtype)
    _save(weights, folder)


def perturbed_copy(source: Path, target: Path, shift: tuple[float, float, float]) -> Path:
    _copy(source, target)
    shift_classifier_bias(target, shift)
    return target


def relabelled_copy(source: Path, target: Path, id2label: dict[str, str]) -> Path:
    """The same weights with labels the service cannot map by name (or can, in another order)."""
    _copy(source, target)
    config_path = target / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["id2label"] = id2label
    config["label2id"] = {label: int(index) for index, label in id2label.items()}
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return target


def widened_copy(source: Path, target: Path, vocab_size: int, seed: int = 0) -> Path:
    """A copy whose embedding table has ``vocab_size`` rows (random beyond the tokenizer's): the same tiny network
    with a large, measurable memory footprint (vocab_size x hidden x 4 bytes), loaded in a second."""
    _copy(source, target)
    weights = load_file(str(target / WEIGHTS))
    key = _key(weights, WORD_EMBEDDINGS)
    table = weights[key]
    generator = torch.Generator().manual_seed(seed)
    extra = torch.randn(vocab_size - table.shape[0], table.shape[1], generator=generator, dtype=table.dtype) * 0.02
    weights[key] = torch.cat([table, extra])
    _save(weights, target)
    config_path = target / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["vocab_size"] = vocab_size
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return target
