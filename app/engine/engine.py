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
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from app import metrics
from app.engine.backends import PreparedVariant, is_reference, prepare_variant
from app.engine.batching import BatchLimits
from app.engine.catalogue import Catalogue, VariantSpec
from app.engine.errors import (
    DeadlineExceededError,
    DrainingError,
    EngineError,
    OverloadedError,
    UnknownVariantError,
    VariantNotReadyError,
)
from app.engine.faults import FaultInjectingRunner
from app.engine.model_store import CheckpointError, CheckpointInfo, dtype_name, inspect_checkpoint
from app.engine.runner import BatchRunner, padded_length
from app.engine.scheduler import DeviceWorker, InferenceRequest, VariantQueue
from app.engine.tokenization import EncodedPairs, PairEncoder

log = logging.getLogger(__name__)

# Requests this small are tokenized on the event loop: the Rust tokenizer needs tens of microseconds for them, less
# than the thread-pool hop would cost; larger ones go to the pool so the loop keeps serving.
INLINE_TOKENIZATION_CHARS = 1024


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
    execution: dict[str, Any] = field(default_factory=dict)
    guard: dict[str, Any] | None = None
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
            "backend": spec.backend,
            "quantization": spec.quantization,
            "execution": self.execution,
            "accuracy_guard": self.guard,
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


def _guard_status(info: CheckpointInfo, prepared: PreparedVariant) -> dict[str, Any]:
    if prepared.guard is not None:
        return {"status": "passed", **prepared.guard.describe()}
    if is_reference(info):
        return {"status": "reference", "reference": "this variant is torch float32, the reference itself"}
    return {"status": "disabled", "reference": None}


class Engine:
    def __init__(
        self,
        catalogue: Catalogue,
        *,
        tokenization_workers: int = 2,
        torch_threads: int | None = None,
        request_timeout_s: float = 30.0,
        allow_faults: bool = False,
        export_cache_dir: Path | None = None,
        max_tokenizing_pairs: int = 1024,
    ) -> None:
        self.catalogue = catalogue
        self.default_variant = catalogue.default_variant
        self.variants: dict[str, VariantRuntime] = {spec.name: VariantRuntime(spec) for spec in catalogue.variants}
        for runtime in self.variants.values():
            if not runtime.spec.enabled:
                runtime.status = VariantStatus.DISABLED
        self._workers: dict[str, DeviceWorker] = {}
        self._tokenize_pool = ThreadPoolExecutor(tokenization_workers, thread_name_prefix="tokenize")
        self.max_tokenizing_pairs = max_tokenizing_pairs
        self._tokenizing_pairs = 0  # pairs handed to the pool and not yet tokenized (only touched on the event loop)
        self._torch_threads = torch_threads
        self._lock = threading.Lock()
        self.request_timeout_s = request_timeout_s
        self.allow_faults = allow_faults
        self.export_cache_dir = export_cache_dir
        self.load_error: str | None = None
        self.draining = False
        self.inflight = 0
        self._idle = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def preflight(self) -> None:
        """Check every enabled variant's checkpoint without loading weights; raises the first CheckpointError.

        Reads each config and loads each fast tokenizer (converting a SentencePiece-only one), so a missing or broken
        tokenizer stops `xnli-serve serve` with exit code 2 before the port opens, like unmappable labels do.
        """
        for runtime in self.variants.values():
            if runtime.spec.enabled:
                if runtime.spec.faults is not None and not self.allow_faults:
                    raise CheckpointError(
                        runtime.spec.name,
                        "declares [variant.faults] but fault injection is disabled "
                        "(set XNLI_SERVE_ENABLE_FAULT_INJECTION=true, for tests only)",
                    )
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
            prepared = prepare_variant(
                info, threads=self._torch_threads or torch.get_num_threads(), export_cache_dir=self.export_cache_dir
            )
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
            runtime.warmup = {
                "shapes": [list(shape) for shape in shapes],
                "seconds": round(time.perf_counter() - started, 4),
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
            )
            runtime.queue = queue
            runtime.worker = self._worker_for(str(info.device))
            runtime.worker.add_queue(queue)
            metrics.VARIANT_INFO.labels(
                spec.name,
                spec.base_model,
                spec.intermediate_task,
                str(info.device),
                dtype_name(info.dtype),
                spec.backend,
                spec.quantization,
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

    def begin_drain(self) -> None:
        """Stop taking new requests (readiness turns 503); what was accepted still finishes."""
        self.draining = True

    async def wait_idle(self) -> None:
        """Return once no request is inside the engine (bound it with asyncio.timeout)."""
        while self.inflight:
            self._idle.clear()
            await self._idle.wait()

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish queued work, then stop the workers and the tokenizer pool."""
        for worker in self._workers.values():
            worker.stop(timeout)
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)

    # -- state -------------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return (
            self.live
            and not self.draining
            and all(runtime.status is VariantStatus.READY for runtime in self.variants.values() if runtime.spec.enabled)
        )

    @property
    def live(self) -> bool:
        """False once loading failed or a device worker died: the process should be restarted."""
        return self.load_error is None and all(worker.alive for worker in self._workers.values())

    def resolve(self, name: str | None) -> VariantRuntime:
        runtime = self.variants.get(name or self.default_variant)
        if runtime is None or not runtime.spec.enabled:
            served = [runtime.spec.name for runtime in self.variants.values() if runtime.spec.enabled]
            raise UnknownVariantError(str(name), served)
        return runtime

    # -- inference ---------------------------------------------------------------------------------------------

    async def predict(
        self,
        pairs: Sequence[tuple[str, str]],
        variant: str | None = None,
        truncate: bool = True,
        timeout_s: float | None = None,
    ) -> PredictionResult:
        """Tokenize off the event loop, queue every pair, and wait until the batches carrying them have run.

        ``timeout_s`` may shorten the engine's request timeout, never lengthen it. Raises an EngineError subclass:
        UnknownVariantError, VariantNotReadyError, InputTooLongError, OverloadedError, DeadlineExceededError,
        DrainingError or InferenceError; each is counted in xnli_request_failures_total.
        """
        runtime = self.resolve(variant)
        name = runtime.spec.name
        self.inflight += 1
        metrics.INFLIGHT_REQUESTS.inc()
        try:
            return await self._predict(runtime, pairs, truncate, timeout_s)
        except EngineError as error:
            metrics.REQUEST_FAILURES.labels(name, error.reason).inc()
            raise
        except asyncio.CancelledError:
            metrics.REQUEST_FAILURES.labels(name, "disconnected").inc()
            raise
        finally:
            self.inflight -= 1
            metrics.INFLIGHT_REQUESTS.dec()
            if self.inflight == 0:
                self._idle.set()

    async def _tokenize(self, encoder: PairEncoder, pairs: Sequence[tuple[str, str]], truncate: bool) -> EncodedPairs:
        """Small requests on the event loop, larger ones in the pool, whose backlog is bounded: past
        ``max_tokenizing_pairs`` waiting pairs a request is refused (429) instead of waiting behind a burst."""
        if sum(len(premise) + len(hypothesis) for premise, hypothesis in pairs) <= INLINE_TOKENIZATION_CHARS:
            return encoder.encode(pairs, truncate)
        if self._tokenizing_pairs + len(pairs) > self.max_tokenizing_pairs:
            raise OverloadedError(
                f"the tokenization backlog is full ({self._tokenizing_pairs} pairs waiting, at most "
                f"{self.max_tokenizing_pairs})",
                retry_after_s=1.0,
            )
        self._tokenizing_pairs += len(pairs)
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._tokenize_pool, encoder.encode, pairs, truncate
            )
        finally:
            self._tokenizing_pairs -= len(pairs)

    async def _predict(
        self, runtime: VariantRuntime, pairs: Sequence[tuple[str, str]], truncate: bool, timeout_s: float | None
    ) -> PredictionResult:
        name = runtime.spec.name
        if self.draining:
            raise DrainingError("the service is shutting down and takes no new requests")
        if runtime.status is not VariantStatus.READY:
            raise VariantNotReadyError(name, str(runtime.status))
        assert runtime.encoder is not None
        assert runtime.queue is not None
        assert runtime.worker is not None
        timeout = self.request_timeout_s if timeout_s is None else min(timeout_s, self.request_timeout_s)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        deadline = started + timeout
        reservation = runtime.worker.admit(runtime.queue, len(pairs), deadline)
        try:
            encoded = await self._tokenize(runtime.encoder, pairs, truncate)
            tokenized = time.perf_counter()
            metrics.TOKENIZATION_DURATION.labels(name).observe(tokenized - started)
            request = InferenceRequest(len(encoded.ids), loop, deadline)
            runtime.worker.submit(runtime.queue, request, encoded.ids, reservation)
        finally:
            runtime.worker.release(reservation)  # a no-op once submit turned it into queued pairs
        try:
            async with asyncio.timeout_at(loop.time() + max(0.0, deadline - time.perf_counter())):
                await request.future
        except TimeoutError:
            request.abandon("deadline")  # the batcher drops its pairs that have not run yet
            raise DeadlineExceededError(
                f"no answer within the {timeout:.3f}s deadline; the request's remaining pairs were dropped"
            ) from None
        except asyncio.CancelledError:
            request.abandon("disconnected")
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
