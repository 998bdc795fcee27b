"""Turn a checkpoint into the runner a variant asks for (torch at its precision, or ONNX Runtime) and guard it.

Every variant that is not torch fp32 is compared with torch fp32 on the probe set before it may serve, so a broken
export, a lossy quantization or an fp16 overflow is a start-up error, not a silent accuracy loss in production.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from app.engine import export_cache
from app.engine.accuracy_guard import GuardReport, compare, probe_sequences, run_probe
from app.engine.model_store import CheckpointError, CheckpointInfo, load_checkpoint
from app.engine.onnx_backend import OnnxRunner, checkpoint_signature, default_cache_root, ensure_export
from app.engine.runner import TorchRunner, WarmableRunner
from app.engine.tokenization import PairEncoder

log = logging.getLogger(__name__)


@dataclass
class PreparedVariant:
    runner: WarmableRunner
    encoder: PairEncoder
    parameters: int
    attention: str
    execution: dict[str, Any] = field(default_factory=dict)
    guard: GuardReport | None = None


def is_reference(info: CheckpointInfo) -> bool:
    """Torch at full precision: what every other way of running a checkpoint is checked against."""
    spec = info.spec
    return spec.backend == "torch" and spec.quantization == "none" and info.dtype == torch.float32


# Torch fp32's answers on the probe set, per checkpoint state, probe length and device: variants that run one
# checkpoint several ways (the demo's ONNX fp32 and int8) are guarded against one reference run, not one each.
_REFERENCES: dict[tuple[Any, ...], npt.NDArray[np.float32]] = {}


def _reference_probabilities(
    info: CheckpointInfo, device: torch.device, runner: TorchRunner, probes: list[list[int]]
) -> npt.NDArray[np.float32]:
    key = (str(info.spec.path), checkpoint_signature(info.spec.path), info.spec.max_seq_len, str(device))
    if key not in _REFERENCES:
        _REFERENCES[key] = run_probe(runner, probes)
    return _REFERENCES[key]


def prepare_variant(info: CheckpointInfo, *, threads: int, export_cache_dir: Path | None = None) -> PreparedVariant:
    spec = info.spec
    guarded = spec.accuracy_guard and not is_reference(info)
    if spec.backend == "torch" and not guarded:
        loaded = load_checkpoint(info)
        runner = TorchRunner(loaded.model, info.device, loaded.pad_token_id, info.label_permutation)
        encoder = PairEncoder(loaded.backend_tokenizer, spec.max_seq_len)
        return PreparedVariant(runner, encoder, loaded.parameters, loaded.attention)

    # The float32 model is the reference (and, for ONNX, the export's source); ONNX variants keep it on the CPU
    # only as long as loading takes.
    reference_device = info.device if spec.backend == "torch" else torch.device("cpu")
    loaded = load_checkpoint(info, dtype=torch.float32, device=reference_device)
    encoder = PairEncoder(loaded.backend_tokenizer, spec.max_seq_len)
    reference_runner = TorchRunner(loaded.model, reference_device, loaded.pad_token_id, info.label_permutation)
    probes = probe_sequences(encoder) if guarded else []
    reference = _reference_probabilities(info, reference_device, reference_runner, probes) if guarded else None

    execution: dict[str, Any] = {}
    served: WarmableRunner
    held: Path | None = None  # the ONNX export this version holds against pruning
    try:
        if spec.backend == "torch":
            model = loaded.model.to(info.dtype)
            served = TorchRunner(model, info.device, loaded.pad_token_id, info.label_permutation)
        else:
            cache_root = default_cache_root(spec.path, export_cache_dir)
            artifact = ensure_export(spec.path, cache_root, lambda: loaded.model, spec.quantization, hold=True)
            held = artifact.path.parent
            started = time.perf_counter()
            onnx_runner = OnnxRunner(
                artifact.path, str(info.device), threads, loaded.pad_token_id, info.label_permutation
            )
            execution = {
                "providers": onnx_runner.providers,
                "export": artifact.describe(),
                "session_seconds": round(time.perf_counter() - started, 3),
            }
            log.info(
                "variant %s: ONNX %s (%s, %s) on %s",
                spec.name,
                spec.quantization,
                artifact.path,
                "reused" if artifact.reused else f"exported in {artifact.seconds:.1f}s",
                onnx_runner.providers[0],
            )
            served = onnx_runner

        report = None
        if reference is not None:
            candidate = run_probe(served, probes)
            reference_name = f"torch float32 on {reference_device}"
            report = compare(spec, reference_name, reference, candidate)
            log.info(
                "variant %s accuracy guard vs %s: top-1 agreement %.4f, max probability difference %.5f",
                spec.name,
                reference_name,
                report.top1_agreement,
                report.max_probability_diff,
            )
            if not report.passed:
                raise CheckpointError(spec.name, report.failure())
    except BaseException:
        if held is not None:  # a version that never serves must not keep its export from being pruned
            export_cache.release(held)
        raise
    prepared = PreparedVariant(served, encoder, loaded.parameters, loaded.attention, execution, report)
    if spec.backend != "torch":
        del loaded, reference_runner
        release_freed_memory()  # the float32 torch model was only needed for the export and the guard
    return prepared


def release_freed_memory() -> None:
    """Collect the torch model's reference cycles and hand freed heap back to the OS (glibc keeps it otherwise)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the process reuses the memory instead
        ctypes.CDLL("libc.so.6").malloc_trim(0)
