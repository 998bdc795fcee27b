"""Checkpoints on disk: checked cheaply before the server starts, then loaded offline onto their device."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from app.engine.catalogue import VariantSpec
from app.engine.labels import LabelMappingError, label_permutation
from app.engine.onnx_backend import cuda_provider_available

log = logging.getLogger(__name__)

# The service never reaches a model hub: checkpoints come from local folders only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEMO_MARKER = "xnli_serve_demo.json"
TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model", "tokenizer.model")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CheckpointError(ValueError):
    """A variant's checkpoint or placement cannot be served; the message names the variant."""

    def __init__(self, variant: str, problem: str) -> None:
        self.variant = variant
        super().__init__(f"variant {variant!r}: {problem}")


@dataclass(frozen=True)
class CheckpointInfo:
    spec: VariantSpec
    config: Any
    label_permutation: tuple[int, ...]
    device: torch.device
    dtype: torch.dtype
    demo: dict[str, Any] | None


@dataclass(frozen=True)
class LoadedCheckpoint:
    info: CheckpointInfo
    model: Any
    backend_tokenizer: Any
    pad_token_id: int
    parameters: int
    attention: str


def resolve_device(spec: VariantSpec) -> torch.device:
    if spec.device == "auto":
        gpu = torch.cuda.is_available()
        if spec.backend == "onnxruntime":  # int8 kernels are CPU-only; CUDA needs the onnxruntime-gpu build
            gpu = gpu and spec.quantization == "none" and cuda_provider_available()
        return torch.device("cuda" if gpu else "cpu")
    device = torch.device(spec.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CheckpointError(spec.name, f"device {spec.device!r} requested but CUDA is not available here")
        if spec.backend == "onnxruntime" and not cuda_provider_available():
            raise CheckpointError(
                spec.name,
                f"device {spec.device!r} with backend 'onnxruntime' needs ONNX Runtime's CUDA provider "
                "(install onnxruntime-gpu instead of onnxruntime)",
            )
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise CheckpointError(
                spec.name, f"device {spec.device!r} requested but only {torch.cuda.device_count()} GPU(s) are visible"
            )
        return torch.device("cuda", index)
    return device


def resolve_dtype(spec: VariantSpec, device: torch.device) -> torch.dtype:
    """The precision torch runs in; ONNX variants are exported from float32 (int8 comes from quantization)."""
    if spec.backend == "onnxruntime":
        return torch.float32
    if spec.dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[spec.dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def inspect_checkpoint(spec: VariantSpec) -> CheckpointInfo:
    """Everything that can be checked without loading weights, so a bad catalogue fails before the port opens."""
    from transformers import AutoConfig

    folder = spec.path
    if not folder.is_dir():
        raise CheckpointError(
            spec.name,
            f"checkpoint folder {folder} does not exist (run `xnli-serve build-demo-store` for the demo variants, "
            "or save a real checkpoint there with save_pretrained)",
        )
    if not (folder / "config.json").is_file():
        raise CheckpointError(spec.name, f"{folder} has no config.json; is it a Hugging Face checkpoint folder?")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(
            spec.name,
            f"{folder} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); save the tokenizer beside the model",
        )
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as error:
        raise CheckpointError(spec.name, f"cannot read {folder / 'config.json'}: {error}") from None
    try:
        permutation = label_permutation(config.id2label)
    except LabelMappingError as error:
        raise CheckpointError(spec.name, f"labels cannot be mapped by name: {error}") from None
    device = resolve_device(spec)
    demo = None
    marker = folder / DEMO_MARKER
    if marker.is_file():
        demo = json.loads(marker.read_text(encoding="utf-8"))
    return CheckpointInfo(spec, config, permutation, device, resolve_dtype(spec, device), demo)


def load_checkpoint(
    info: CheckpointInfo, dtype: torch.dtype | None = None, device: torch.device | None = None
) -> LoadedCheckpoint:
    """Load weights and tokenizer from the local folder only (no hub access, ever).

    ``dtype``/``device`` override the variant's own, for the float32 reference the accuracy guard compares against.
    """
    dtype = dtype or info.dtype
    device = device or info.device
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    spec = info.spec
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.path, local_files_only=True)
    except Exception as error:
        raise CheckpointError(spec.name, f"cannot load tokenizer from {spec.path}: {error}") from None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise CheckpointError(spec.name, "needs a fast tokenizer (tokenizer.json); re-save it with transformers")
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else info.config.pad_token_id
    if pad_token_id is None:
        raise CheckpointError(spec.name, "tokenizer and config define no pad token")

    attention = "sdpa"
    try:
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                spec.path, local_files_only=True, dtype=dtype, attn_implementation=attention
            )
        except (ValueError, ImportError):
            attention = "eager"
            model = AutoModelForSequenceClassification.from_pretrained(
                spec.path, local_files_only=True, dtype=dtype, attn_implementation=attention
            )
    except Exception as error:
        raise CheckpointError(spec.name, f"cannot load model weights from {spec.path}: {error}") from None
    model = model.to(device).eval()
    model.requires_grad_(False)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    log.info(
        "loaded variant %s: %d parameters on %s as %s (%s attention)",
        spec.name,
        parameters,
        device,
        dtype_name(dtype),
        attention,
    )
    return LoadedCheckpoint(info, model, backend, int(pad_token_id), parameters, attention)
