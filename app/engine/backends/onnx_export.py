"""ONNX exports for backends that run one (ONNX Runtime today): cached next to the checkpoint, optionally int8.

Exports are slow (seconds for base, a minute for large), so they are cached under ``<checkpoint>/.xnli-serve-onnx/``
(or ``XNLI_SERVE_EXPORT_CACHE_DIR``) in a folder named by a key over everything that decides the result: the
checkpoint's bytes, the exporter's and ONNX Runtime's versions, this module's recipe and the quantization. A changed
checkpoint or an upgraded exporter gets a new key (and the stale folder is removed unless another process still
serves it); ``export_cache`` makes this safe for several processes sharing one cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.engine.models import export_cache
from app.engine.models.store import checkpoint_fingerprint

log = logging.getLogger(__name__)

# Bump whenever the export or quantization steps below, or the cache's manifest, change what they write. 2: the manifest
# lists every file and size (older exports keep their keys, so replicas still running older code keep theirs).
EXPORT_RECIPE = 2
CACHE_FOLDER = ".xnli-serve-onnx"
MODEL_FILE = "model.onnx"
INPUT_NAMES = ("input_ids", "attention_mask")


class ExportError(RuntimeError):
    """The checkpoint could not be exported or quantized; the message says at which step."""


@dataclass(frozen=True, slots=True)
class OnnxArtifact:
    path: Path
    key: str
    reused: bool
    seconds: float

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "key": self.key, "reused": self.reused, "seconds": round(self.seconds, 3)}


def exporter_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript
    import torch

    return {
        "recipe": str(EXPORT_RECIPE),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def default_cache_root(checkpoint: Path, override: Path | None) -> Path:
    """Next to the checkpoint, unless the operator points elsewhere (read-only model volumes)."""
    if override is None:
        return checkpoint / CACHE_FOLDER
    return override / f"{checkpoint.name}-{hashlib.sha256(str(checkpoint).encode()).hexdigest()[:8]}"


def _export_float32(model: Any, destination: Path) -> None:
    import torch

    sample = torch.full((2, 16), 5, dtype=torch.long)  # 2 x 16: neither dimension may specialise to 0/1
    batch = torch.export.Dim("batch", max=65_536)
    sequence = torch.export.Dim("sequence")  # bounded by the checkpoint's position table, not by the export
    with _quiet_logs():
        program = torch.onnx.export(
            model,
            (),
            kwargs={"input_ids": sample, "attention_mask": torch.ones_like(sample)},
            dynamo=True,
            dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
            input_names=list(INPUT_NAMES),
            output_names=["logits"],
            optimize=True,
            verbose=False,
        )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    program.save(str(destination), external_data=True)


def int8_weight_type() -> str:
    """Signed int8 weights where the CPU has VNNI (or is not x86); unsigned where AVX2's u8 x s8 kernel can saturate.

    ONNX Runtime's own guidance for dynamic quantization: without VNNI, the u8s8 path (VPMADDUBSW) may overflow
    16-bit intermediates; u8u8 avoids it. On this project's AVX2 machine u8u8 raised top-1 agreement with fp32 on the
    probe set from 0.80 to 0.97 (tiny demo) and 0.82 to 0.92 (base demo), for about 10% of int8's speed.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return "int8"
    x86 = " avx2 " in flags or " sse4_2 " in flags
    vnni = any(flag in flags for flag in (" avx512_vnni ", " avx_vnni ", " amx_int8 "))
    return "uint8" if x86 and not vnni else "int8"


def _quantize_int8(source: Path, destination: Path, weight_type: str) -> None:
    """Int8 linear layers (every MatMul/Gemm with constant weights), activations quantized per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_logs():
        quantize_dynamic(
            source,
            destination,
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=True,
            weight_type=QuantType.QUInt8 if weight_type == "uint8" else QuantType.QInt8,
            use_external_data_format=True,
        )


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """The exporter and quantizer log every graph rewrite at INFO (some on the root logger); keep start-up readable."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def _build(
    root: Path, key: str, manifest: dict[str, Any], write: Callable[[Path], None], keep_held: bool
) -> OnnxArtifact:
    built = export_cache.build(root, key, manifest, lambda staging: write(staging / MODEL_FILE), keep_held=keep_held)
    return OnnxArtifact(built.folder / MODEL_FILE, key, built.reused, built.seconds)


def ensure_export(
    checkpoint: Path,
    cache_root: Path,
    load_float32_model: Callable[[], Any],
    quantization: str,
    hold: bool = False,
) -> OnnxArtifact:
    """The ONNX file for ``checkpoint`` (quantized if asked), reusing the cache when it is up to date.

    int8 is derived from the float32 export, so a float32 and an int8 variant of one checkpoint share one export.
    ``hold``: this process will serve the result, which no process may prune while it runs (export_cache.hold).
    """
    fingerprint = checkpoint_fingerprint(checkpoint)
    versions = exporter_versions()
    float32_parts = {"kind": "float32", "checkpoint_sha256": fingerprint, "versions": versions}
    float32_key = _key(float32_parts)

    def export(path: Path) -> None:
        try:
            _export_float32(load_float32_model(), path)
        except Exception as error:
            raise ExportError(f"ONNX export of {checkpoint} failed: {type(error).__name__}: {error}") from error

    quantized = quantization != "none"
    float32 = _build(
        cache_root, float32_key, {**float32_parts, "checkpoint": str(checkpoint)}, export, keep_held=hold or quantized
    )
    if not quantized:
        return float32

    weight_type = int8_weight_type()
    int8_parts = {"kind": quantization, "source_key": float32_key, "versions": versions, "weights": weight_type}
    int8_key = _key(int8_parts)

    def quantize(path: Path) -> None:
        try:
            _quantize_int8(float32.path, path, weight_type)
        except Exception as error:
            raise ExportError(f"int8 quantization of {float32.path} failed: {type(error).__name__}: {error}") from error

    try:
        int8 = _build(cache_root, int8_key, {**int8_parts, "checkpoint": str(checkpoint)}, quantize, keep_held=hold)
    finally:
        export_cache.release(float32.path.parent)  # held only while int8 was derived from it
    return OnnxArtifact(int8.path, int8.key, int8.reused and float32.reused, float32.seconds + int8.seconds)
