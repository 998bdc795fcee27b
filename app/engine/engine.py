"""The engine facade: variants, their queues and device workers. Knows nothing of HTTP.

Drive it from the API, a test or a benchmark alike:

    engine = Engine(load_catalogue(path)); engine.preflight(); engine.load()
    result = await engine.predict([("premise", "hypothesis")], variant="xlmr-mnli")
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from app import metrics
from app.engine.batching import BatchLimits
from app.engine.catalogue import Catalogue, VariantSpec
from app.engine.model_store import (
    CheckpointError,
    CheckpointInfo,
    dtype_name,
    inspect_checkpoint,
    load_checkpoint,
)
from app.engine.runner import TorchRunner, padded_length
from app.engine.scheduler import DeviceWorker, InferenceRequest, VariantQueue
from app.engine.tokenization import PairEncoder

log = logging.getLogger(__name__)


class EngineError(Exception):
    """Base of the errors callers are expected to translate (the API maps them to status codes)."""


class UnknownVariantError(EngineError, KeyError):
    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = list(known)
        super().__init__(f"unknown variant {name!r}; served variants: {', '.join(known)}")

    def __str__(self) -> str:
        return str(self.args[0])


class VariantNotReadyError(EngineError):
    def __init__(self, name: str, status: str) -> None:
        self.name = name
        self.status = status
        super().__init__(f"variant {name!r} is not ready (status: {status})")


class VariantStatus(StrEnum):
    PENDING = "pending"
    LOADING = "loading"
    WARMING_UP = "warming_up"
    READY = "ready"
    FAILED = "failed"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class Timings:
    tokenization_s: float
    queue_s: float
    inference_s: float
    total_s: float


@dataclass(frozen=True, slots=True)
class PredictionResult:
    variant: str
    probabilities: npt.NDArray[np.float32]
    truncated: list[bool]
    timings: Timings


@dataclass
class VariantRuntime:
    spec: VariantSpec
    status: VariantStatus = VariantStatus.PENDING
    error: str | None = None
    info: CheckpointInfo | None = None
    encoder: PairEncoder | None = None
    queue: VariantQueue | None = None
    worker: DeviceWorker | None = None
    parameters: int | None = None
    attention: str | None = None
    warmup: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Catalogue metadata plus what loading found; what `/variants` shows."""
        spec = self.spec
        info = self.info
        demo = info.demo if info else None
        return {
            "name": spec.name,
            "base_model": spec.base_model,
            "intermediate_task": spec.intermediate_task,
            "description": spec.description,
            "path": str(spec.path),
            "enabled": spec.enabled,
            "status": str(self.status),
            "error": self.error,
            "device": str(info.device) if info else spec.device,
            "dtype": dtype_name(info.dtype) if info else spec.dtype,
            "parameters": self.parameters,
            "attention": self.attention,
            "max_batch_size": spec.max_batch_size,
            "max_batch_tokens": spec.max_batch_tokens,
            "max_seq_len": spec.max_seq_len,
            "max_wait_ms": spec.max_wait_ms,
            "demo": demo is not None,
            "untrained": bool(demo and demo.get("untrained")),
            "warmup": self.warmup,
        }


def warmup_shapes(spec: VariantSpec) -> list[tuple[int, int]]:
    """The largest batches the batcher can form: the most rows, and the longest rows (attention grows with L^2)."""
    longest = padded_length(spec.max_seq_len)
    widest_rows = spec.max_batch_size
    widest_width = min(longest, max(8, (spec.max_batch_tokens // widest_rows) // 8 * 8))
    longest_rows = max(1, min(spec.max_batch_size, spec.max_batch_tokens // longest))
    return sorted({(widest_rows, widest_width), (longest_rows, longest)})


class Engine:
    def __init__(
        self,
        catalogue: Catalogue,
        *,
        tokenization_workers: int = 2,
        torch_threads: int | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.default_variant = catalogue.default_variant
        self.variants: dict[str, VariantRuntime] = {spec.name: VariantRuntime(spec) for spec in catalogue.variants}
        for runtime in self.variants.values():
            if not runtime.spec.enabled:
                runtime.status = VariantStatus.DISABLED
        self._workers: dict[str, DeviceWorker] = {}
        self._tokenize_pool = ThreadPoolExecutor(tokenization_workers, thread_name_prefix="tokenize")
        self._torch_threads = torch_threads
        self._lock = threading.Lock()
        self.load_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def preflight(self) -> None:
        """Check every enabled variant's checkpoint without loading weights; raises the first CheckpointError."""
        for runtime in self.variants.values():
            if runtime.spec.enabled:
                runtime.info = inspect_checkpoint(runtime.spec)

    def load(self) -> None:
        """Load, warm up and start serving every enabled variant (blocking; the API runs it in a thread)."""
        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)
        try:
            for runtime in self.variants.values():
                if runtime.spec.enabled:
                    self._load_variant(runtime)
        except Exception as error:
            self.load_error = str(error)
            raise

    def _load_variant(self, runtime: VariantRuntime) -> None:
        spec = runtime.spec
        try:
            runtime.status = VariantStatus.LOADING
            info = runtime.info or inspect_checkpoint(spec)
            runtime.info = info
            loaded = load_checkpoint(info)
            runtime.parameters = loaded.parameters
            runtime.attention = loaded.attention
            runtime.encoder = PairEncoder(loaded.backend_tokenizer, spec.max_seq_len)
            runner = TorchRunner(loaded.model, info.device, loaded.pad_token_id, info.label_permutation)
            runtime.status = VariantStatus.WARMING_UP
            started = time.perf_counter()
            shapes = warmup_shapes(spec)
            for rows, width in shapes:
                runner.warm_up(rows, width)
            runtime.warmup = {
                "shapes": [list(shape) for shape in shapes],
                "seconds": round(time.perf_counter() - started, 4),
            }
            queue = VariantQueue(
                spec.name, runner, BatchLimits(spec.max_batch_size, spec.max_batch_tokens), spec.max_wait_ms
            )
            runtime.queue = queue
            runtime.worker = self._worker_for(str(info.device))
            runtime.worker.add_queue(queue)
            metrics.VARIANT_INFO.labels(
                spec.name, spec.base_model, spec.intermediate_task, str(info.device), dtype_name(info.dtype)
            ).set(1)
            runtime.status = VariantStatus.READY
            log.info("variant %s ready (warm-up %s in %.3fs)", spec.name, shapes, runtime.warmup["seconds"])
        except CheckpointError as error:
            runtime.status = VariantStatus.FAILED
            runtime.error = str(error)
            raise
        except Exception as error:
            runtime.status = VariantStatus.FAILED
            runtime.error = f"{type(error).__name__}: {error}"
            raise CheckpointError(spec.name, runtime.error) from error

    def _worker_for(self, device: str) -> DeviceWorker:
        with self._lock:
            worker = self._workers.get(device)
            if worker is None:
                if device.startswith("cuda"):
                    metrics.register_cuda_collector()
                worker = DeviceWorker(device)
                worker.start()
                self._workers[device] = worker
            return worker

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish queued work, then stop the workers and the tokenizer pool."""
        for worker in self._workers.values():
            worker.stop(timeout)
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)

    # -- state -------------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.live and all(
            runtime.status is VariantStatus.READY for runtime in self.variants.values() if runtime.spec.enabled
        )

    @property
    def live(self) -> bool:
        """False once loading failed or a device worker died: the process should be restarted."""
        return self.load_error is None and all(worker.alive for worker in self._workers.values())

    def pending_pairs(self) -> int:
        return sum(worker.pending_pairs() for worker in self._workers.values())

    def resolve(self, name: str | None) -> VariantRuntime:
        runtime = self.variants.get(name or self.default_variant)
        if runtime is None or not runtime.spec.enabled:
            served = [runtime.spec.name for runtime in self.variants.values() if runtime.spec.enabled]
            raise UnknownVariantError(str(name), served)
        return runtime

    # -- inference ---------------------------------------------------------------------------------------------

    async def predict(
        self, pairs: Sequence[tuple[str, str]], variant: str | None = None, truncate: bool = True
    ) -> PredictionResult:
        """Tokenize off the event loop, queue every pair, and wait until the batches carrying them have run.

        Raises UnknownVariantError, VariantNotReadyError, InputTooLongError or InferenceError.
        """
        runtime = self.resolve(variant)
        if runtime.status is not VariantStatus.READY:
            raise VariantNotReadyError(runtime.spec.name, str(runtime.status))
        assert runtime.encoder is not None
        assert runtime.queue is not None
        assert runtime.worker is not None
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        encoded = await loop.run_in_executor(self._tokenize_pool, runtime.encoder.encode, pairs, truncate)
        tokenized = time.perf_counter()
        name = runtime.spec.name
        metrics.TOKENIZATION_DURATION.labels(name).observe(tokenized - started)

        request = InferenceRequest(len(encoded.ids), loop)
        runtime.worker.submit(runtime.queue, request, encoded.ids)
        try:
            await request.future
        except asyncio.CancelledError:
            request.abandoned = True  # the batcher drops its remaining pairs instead of computing them
            raise
        queue_s = max(0.0, request.done_at - request.enqueued_at - request.compute_s)
        metrics.QUEUE_DURATION.labels(name).observe(queue_s)
        finished = time.perf_counter()
        return PredictionResult(
            variant=name,
            probabilities=request.probabilities,
            truncated=encoded.truncated,
            timings=Timings(tokenized - started, queue_s, request.compute_s, finished - started),
        )
