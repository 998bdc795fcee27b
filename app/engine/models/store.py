"""Checkpoints on disk: checked cheaply before the server starts (config, labels, tokenizer, the backend's device and
precision) and fingerprinted; the backends (``app.engine.backends``) load them."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.engine.backends import get_backend
from app.engine.models.catalogue import VariantSpec
from app.engine.tasks import LabelMappingError

log = logging.getLogger(__name__)

# The service never reaches a model hub: checkpoints come from local folders only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEMO_MARKER = "xnli_serve_demo.json"
# A fast tokenizer's own file, or a SentencePiece model that transformers converts to one (XLM-R's classic layout).
FAST_TOKENIZER_FILE = "tokenizer.json"
SENTENCEPIECE_FILES = ("sentencepiece.bpe.model", "tokenizer.model")
TOKENIZER_FILES = (FAST_TOKENIZER_FILE, *SENTENCEPIECE_FILES)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


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
    backend_tokenizer: Any  # the fast (Rust) `tokenizers.Tokenizer`, loaded before the port opens
    pad_token_id: int


def _network_files(folder: Path) -> list[Path]:
    """The files that define the network: config and weights (not the tokenizer, not our cache folder)."""
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file()
        and (path.name == "config.json" or path.suffix in WEIGHT_SUFFIXES or path.name.endswith(".index.json"))
    )


def checkpoint_signature(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Name, size and modification time of each network file: cheap to read, changes whenever the weights do."""
    return tuple(
        (path.name, stat.st_size, stat.st_mtime_ns) for path in _network_files(folder) for stat in [path.stat()]
    )


def checkpoint_fingerprint(folder: Path) -> str:
    """SHA-256 over the network's files, names included; hashed once per process while they are unchanged.

    Several variants may run one checkpoint (the demo's fp32 and int8 ONNX variants do), and a large checkpoint takes
    seconds to hash, so the digest is remembered against the files' signature.
    """
    return _hash_files(folder, checkpoint_signature(folder))


@functools.lru_cache(maxsize=64)
def _hash_files(folder: Path, signature: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in signature:
        digest.update(name.encode() + b"\0")
        with (folder / name).open("rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def inspect_checkpoint(spec: VariantSpec) -> CheckpointInfo:
    """Everything that can be checked without loading weights, so a bad catalogue fails before the port opens.

    Reads the config and loads the tokenizer (converting a SentencePiece model when there is no tokenizer.json).
    """
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
        permutation = spec.task.label_order(config.id2label)
    except LabelMappingError as error:
        raise CheckpointError(spec.name, f"labels cannot be mapped by name: {error}") from None
    backend_tokenizer, pad_token_id = load_fast_tokenizer(spec, config)
    backend = get_backend(spec.backend)
    device = backend.resolve_device(spec)
    demo = None
    marker = folder / DEMO_MARKER
    if marker.is_file():
        demo = json.loads(marker.read_text(encoding="utf-8"))
    return CheckpointInfo(
        spec, config, permutation, device, backend.resolve_dtype(spec, device), demo, backend_tokenizer, pad_token_id
    )


def load_fast_tokenizer(spec: VariantSpec, config: Any) -> tuple[Any, int]:
    """The checkpoint's fast (Rust) tokenizer and its pad id; any problem is a CheckpointError saying what is missing.

    Without tokenizer.json, transformers converts ``sentencepiece.bpe.model`` (needs the sentencepiece and protobuf
    packages). A tokenizer that only loads as a slow (Python) one is refused: the batcher tokenizes with the Rust
    tokenizer in a thread pool, off the GIL, and cannot run a Python tokenizer.
    """
    from transformers import AutoTokenizer

    folder = spec.path
    with _transformers_warnings() as warnings:
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as error:
            raise CheckpointError(spec.name, _tokenizer_problem(folder, error, warnings)) from None
    for warning in warnings:
        log.warning("variant %s: tokenizer: %s", spec.name, warning)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(
            spec.name,
            f"the tokenizer in {folder} loads only as a slow Python tokenizer ({type(tokenizer).__name__}); the "
            "service needs a fast (Rust) one: save a tokenizer.json beside the model, or name a tokenizer_class with "
            "a fast version in tokenizer_config.json (XLMRobertaTokenizer for XLM-R)",
        )
    if not (folder / FAST_TOKENIZER_FILE).is_file():
        log.info(
            "variant %s: converted %s to a fast tokenizer (write tokenizer.json with save_pretrained to skip this)",
            spec.name,
            next(name for name in SENTENCEPIECE_FILES if (folder / name).is_file()),
        )
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.pad_token_id
    if pad_token_id is None:
        raise CheckpointError(spec.name, "tokenizer and config define no pad token")
    vocab_size = getattr(config, "vocab_size", None)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise CheckpointError(
            spec.name,
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab_size}: "
            "tokenizer and weights do not belong together",
        )
    return backend, int(pad_token_id)


def _tokenizer_problem(folder: Path, error: Exception, warnings: list[str]) -> str:
    """Why the tokenizer did not load, in words a user can act on (transformers' own error may name tiktoken)."""
    from transformers.utils.import_utils import is_protobuf_available, is_sentencepiece_available

    sentencepiece_file = next((folder / name for name in SENTENCEPIECE_FILES if (folder / name).is_file()), None)
    if sentencepiece_file is not None and not (folder / FAST_TOKENIZER_FILE).is_file():
        missing = [
            package
            for package, available in (
                ("sentencepiece", is_sentencepiece_available()),
                ("protobuf", is_protobuf_available()),
            )
            if not available
        ]
        if missing:
            return (
                f"cannot convert {sentencepiece_file} to a fast tokenizer: the {' and '.join(missing)} "
                f"package{'s are' if len(missing) > 1 else ' is'} not installed (pip install {' '.join(missing)})"
            )
        import sentencepiece

        try:
            sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_file))
        except Exception as unreadable:
            return f"{sentencepiece_file} is not a readable SentencePiece model ({unreadable}); copy it again"
    said = f" (transformers said: {' / '.join(warnings)})" if warnings else ""
    return f"cannot load tokenizer from {folder}: {type(error).__name__}: {error}{said}"


class _ListHandler(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(" ".join(record.getMessage().split()))


@contextmanager
def _transformers_warnings() -> Iterator[list[str]]:
    """Hold transformers' warnings back, so a failure is one message and a success logs them under the variant."""
    logger = logging.getLogger("transformers")
    messages: list[str] = []
    saved = logger.handlers[:], logger.propagate
    logger.handlers[:] = [_ListHandler(messages)]
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.handlers[:], logger.propagate = saved
