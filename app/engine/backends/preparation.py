"""Turn a checkpoint into the runner its variant's backend builds, and guard it against torch float32.

Every variant its backend does not declare to be the reference is compared with torch float32 on the probe set before
it may serve (unless the catalogue turns the guard off), so a broken export, a lossy quantization or an fp16 overflow
is a start-up error, not a silent accuracy loss in production. This module knows no backend by name: it asks the
variant's ``Backend`` where to load the torch model, what to check and how to build the runner.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from app.engine.backends import BackendSource, GuardTolerances, get_backend
from app.engine.backends.torch import LoadedCheckpoint, TorchRunner, load_checkpoint
from app.engine.models.accuracy_guard import GuardReport, compare, probe_sequences, run_probe
from app.engine.models.store import CheckpointError, CheckpointInfo, checkpoint_signature
from app.engine.scheduler.runner import WarmableRunner
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
    release: Callable[[], None] = field(default=lambda: None)
    """Undo what the backend holds for this version (an export held against pruning): once, when it stops serving
    or fails before serving."""


def is_reference(info: CheckpointInfo) -> bool:
    """Torch at full precision: what every other way of running a checkpoint is checked against."""
    return get_backend(info.spec.backend).is_reference(info)


# Torch fp32's answers on the probe set, per checkpoint state, probe length and device: variants that run one
# checkpoint several ways (the demo's ONNX fp32 and int8) are guarded against one reference run, not one each.
_REFERENCES: dict[tuple[Any, ...], npt.NDArray[np.float32]] = {}


def _reference_probabilities(
    loaded: LoadedCheckpoint, device: torch.device, probes: list[list[int]]
) -> npt.NDArray[np.float32]:
    info = loaded.info
    key = (str(info.spec.path), checkpoint_signature(info.spec.path), info.spec.max_seq_len, str(device))
    if key not in _REFERENCES:
        runner = TorchRunner(loaded.model, device, loaded.pad_token_id, info.label_permutation, info.spec.task)
        _REFERENCES[key] = run_probe(runner, probes)
    return _REFERENCES[key]


def _guard(
    info: CheckpointInfo,
    tolerances: GuardTolerances,
    device: torch.device,
    reference: npt.NDArray[np.float32],
    candidate: npt.NDArray[np.float32],
) -> GuardReport:
    reference_name = f"torch float32 on {device}"
    report = compare(tolerances, reference_name, reference, candidate)
    log.info(
        "variant %s accuracy guard vs %s: top-1 agreement %.4f, max probability difference %.5f",
        info.spec.name,
        reference_name,
        report.top1_agreement,
        report.max_probability_diff,
    )
    if not report.passed:
        raise CheckpointError(info.spec.name, report.failure())
    return report


def prepare_variant(info: CheckpointInfo, *, threads: int, export_cache_dir: Path | None = None) -> PreparedVariant:
    spec = info.spec
    backend = get_backend(spec.backend)
    tolerances = backend.guard_tolerances(info)
    # A guarded variant's backend starts from the float32 model, which is also the reference.
    device = backend.source_device(info)
    loaded = load_checkpoint(info, torch.float32 if tolerances is not None else backend.source_dtype(info), device)
    encoder = spec.task.build_encoder(loaded.backend_tokenizer, spec.max_seq_len)
    probes = probe_sequences(encoder) if tolerances is not None else []
    reference = _reference_probabilities(loaded, device, probes) if tolerances is not None else None

    built = backend.load(BackendSource(info, loaded.model, threads, export_cache_dir))
    try:
        report = None
        if tolerances is not None and reference is not None:
            report = _guard(info, tolerances, device, reference, run_probe(built.runner, probes))
    except BaseException:
        built.release()  # a version that never serves must not keep its export from being pruned
        raise
    prepared = PreparedVariant(
        built.runner, encoder, loaded.parameters, loaded.attention, built.execution, report, built.release
    )
    if not backend.serves_source_model:
        del loaded
        release_freed_memory()  # the float32 torch model was only needed to build the runner and for the guard
    return prepared


def release_freed_memory() -> None:
    """Collect the torch model's reference cycles and hand freed heap back to the OS (glibc keeps it otherwise)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the process reuses the memory instead
        ctypes.CDLL("libc.so.6").malloc_trim(0)
