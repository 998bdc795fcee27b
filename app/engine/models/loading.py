"""Loading a variant: checkpoint to runner (through the backends), accuracy guard status, warm-up at the largest
shapes the batcher can form, a queue on its device's worker; and letting a loaded variant's memory go again."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from app import metrics
from app.engine.backends import get_backend
from app.engine.backends.preparation import PreparedVariant, is_reference, prepare_variant, release_freed_memory
from app.engine.models import export_cache
from app.engine.models.catalogue import VariantSpec
from app.engine.models.faults import FaultInjectingRunner
from app.engine.models.store import CheckpointError, CheckpointInfo, dtype_name, inspect_checkpoint
from app.engine.scheduler.batching import BatchLimits
from app.engine.scheduler.padding import padded_length
from app.engine.scheduler.queues import VariantQueue
from app.engine.scheduler.runner import BatchRunner, WarmableRunner
from app.engine.scheduler.worker import DeviceWorker
from app.engine.status import VariantRuntime, VariantStatus

log = logging.getLogger(__name__)


class DeviceWorkers:
    """One device worker per device, started when the first variant is placed on it. ``pipeline``: whether they
    answer a batch while the next one runs (None: on CUDA devices only)."""

    def __init__(self, pipeline: bool | None = None) -> None:
        self.pipeline = pipeline
        self._workers: dict[str, DeviceWorker] = {}
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[DeviceWorker]:
        return iter(list(self._workers.values()))

    def worker_for(self, device: str) -> DeviceWorker:
        with self._lock:
            worker = self._workers.get(device)
            if worker is None:
                if device.startswith("cuda"):
                    metrics.register_cuda_collector()
                worker = DeviceWorker(device, self.pipeline)
                worker.start()
                self._workers[device] = worker
            return worker


def check_faults(spec: VariantSpec, allow_faults: bool) -> None:
    """Refuse a variant that declares fault injection unless the operator enabled it."""
    if spec.faults is not None and not allow_faults:
        raise CheckpointError(
            spec.name,
            "declares [variant.faults] but fault injection is disabled "
            "(set XNLI_SERVE_ENABLE_FAULT_INJECTION=true, for tests only)",
        )


def fastest_forward(runner: WarmableRunner, repeats: int = 3) -> float:
    """Seconds of the cheapest forward pass (one row of 8 tokens), the best of a few: the floor of any answer."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        runner.warm_up(1, 8)
        timings.append(time.perf_counter() - started)
    return min(timings)


def release_export(execution: dict[str, Any]) -> None:
    """Let go of the ONNX artifact a variant version held against pruning (no-op for torch variants)."""
    export = execution.get("export")
    if export:
        export_cache.release(Path(export["path"]).parent)


def warmup_shapes(spec: VariantSpec) -> list[tuple[int, int]]:
    """The largest batches the batcher can form: the most rows, and the longest rows (attention grows with L^2)."""
    longest = padded_length(spec.max_seq_len)
    widest_rows = spec.max_batch_size
    widest_width = min(longest, max(8, (spec.max_batch_tokens // widest_rows) // 8 * 8))
    longest_rows = max(1, min(spec.max_batch_size, spec.max_batch_tokens // longest))
    return sorted({(widest_rows, widest_width), (longest_rows, longest)})


def free_memory() -> None:
    """After a variant was let go: collect its model, return freed heap to the OS, and CUDA's cache to the device."""
    release_freed_memory()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _guard_status(info: CheckpointInfo, prepared: PreparedVariant) -> dict[str, Any]:
    if prepared.guard is not None:
        return {"status": "passed", **prepared.guard.describe()}
    if is_reference(info):
        return {"status": "reference", "reference": "this variant is torch float32, the reference itself"}
    return {"status": "disabled", "reference": None}


def load_runtime(
    runtime: VariantRuntime, devices: DeviceWorkers, threads: int | None, export_cache_dir: Path | None
) -> None:
    """Load, guard and warm up ``runtime``'s checkpoint and place its queue on its device's worker; READY after.
    Raises CheckpointError (status FAILED, the reason in ``runtime.error``)."""
    spec = runtime.spec
    try:
        runtime.status = VariantStatus.LOADING
        info = runtime.info or inspect_checkpoint(spec)
        runtime.info = info
        prepared = prepare_variant(info, threads=threads or torch.get_num_threads(), export_cache_dir=export_cache_dir)
        runtime.parameters = prepared.parameters
        runtime.attention = prepared.attention
        runtime.encoder = prepared.encoder
        runtime.execution = prepared.execution
        runtime.guard = _guard_status(info, prepared)
        runtime.status = VariantStatus.WARMING_UP
        started = time.perf_counter()
        shapes = warmup_shapes(spec)
        seconds_per_pair = 0.0
        for rows, width in shapes:
            shape_started = time.perf_counter()
            prepared.runner.warm_up(rows, width)
            seconds_per_pair = max(seconds_per_pair, (time.perf_counter() - shape_started) / rows)
        min_forward_s = fastest_forward(prepared.runner)
        runtime.warmup = {
            "shapes": [list(shape) for shape in shapes],
            "seconds": round(time.perf_counter() - started, 4),
            "fastest_forward_ms": round(min_forward_s * 1000, 3),
        }
        runner: BatchRunner = prepared.runner
        if spec.faults is not None:
            runner = FaultInjectingRunner(prepared.runner, spec.faults)
        queue = VariantQueue(
            spec.name,
            runner,
            BatchLimits(spec.max_batch_size, spec.max_batch_tokens, spec.max_padding_ratio),
            max_wait_ms=spec.max_wait_ms,
            max_queue_pairs=spec.max_queue_pairs,
            seconds_per_pair=seconds_per_pair,  # a first estimate for admission, refined by every batch
            max_background_batch_s=spec.max_background_batch_ms / 1000.0,
            min_forward_s=min_forward_s,
            stages=get_backend(spec.backend).stages,
            labels=spec.task.labels,
        )
        runtime.queue = queue
        runtime.worker = devices.worker_for(str(info.device))
        runtime.worker.add_queue(queue)
        runtime.info_labels = (
            spec.name,
            spec.base_model,
            spec.intermediate_task,
            str(info.device),
            dtype_name(info.dtype),
            spec.backend,
            spec.quantization,
        )
        metrics.VARIANT_INFO.labels(*runtime.info_labels).set(1)
        runtime.status = VariantStatus.READY
        log.info("variant %s ready (warm-up %s in %.3fs)", spec.name, shapes, runtime.warmup["seconds"])
    except Exception as error:
        runtime.status = VariantStatus.FAILED
        runtime.error = str(error) if isinstance(error, CheckpointError) else f"{type(error).__name__}: {error}"
        release_export(runtime.execution)  # an export this failed version held must stay prunable
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(spec.name, runtime.error) from error
