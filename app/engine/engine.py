"""The engine facade: variants, their queues and device workers. Knows nothing of HTTP.

Drive it from the API, a test or a benchmark alike:

    engine = Engine(load_catalogue(path)); engine.preflight(); engine.load()
    result = await engine.predict([("premise", "hypothesis")], variant="xlmr-mnli")

While it serves, the model repository methods change what it serves: ``await engine.load_variant(name)`` re-reads
that name's catalogue entry and loads it beside the version serving now, then switches to it at once;
``await engine.unload_variant(name)`` stops admitting its requests, lets accepted ones finish and frees its memory.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from app.engine import export_cache
from app.engine.backends.preparation import PreparedVariant, is_reference, prepare_variant, release_freed_memory
from app.engine.batching import BatchLimits
from app.engine.catalogue import Catalogue, CatalogueError, VariantSpec, load_catalogue
from app.engine.errors import (
    DeadlineExceededError,
    DrainingError,
    EngineError,
    InputTooLongError,
    OverloadedError,
    RepositoryBusyError,
    UnknownVariantError,
    VariantLoadError,
    VariantNotReadyError,
)
from app.engine.faults import FaultInjectingRunner
from app.engine.labels import LABELS
from app.engine.model_store import CheckpointError, CheckpointInfo, dtype_name, inspect_checkpoint
from app.engine.runner import BatchRunner, WarmableRunner, padded_length
from app.engine.scheduler import DeviceWorker, InferenceRequest, Priority, ShadowRefused, VariantQueue
from app.engine.tokenization import EncodedPairs, PairEncoder
from app.engine.traffic import TrafficRouter

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
    UNLOADING = "unloading"  # replaced or unloaded: admits nothing, finishes what it accepted
    UNLOADED = "unloaded"


class RepositoryState(StrEnum):
    """A variant's state in the model repository index (the Open Inference Protocol's names)."""

    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"


@dataclass(frozen=True, slots=True)
class RepositoryEntry:
    name: str
    state: RepositoryState
    reason: str


@dataclass(frozen=True, slots=True)
class ShadowJob:
    """Pairs a primary answered, sampled to be run again on a candidate and compared."""

    primary: str
    candidate: str
    pairs: list[tuple[str, str]]
    primary_probabilities: npt.NDArray[np.float32]
    truncate: bool
    language: str

    def drop(self, reason: str) -> None:
        metrics.SHADOW_DROPPED_PAIRS.labels(self.primary, self.candidate, reason).inc(len(self.pairs))

    def record(self, candidate_probabilities: npt.NDArray[np.float32]) -> None:
        """Count the pairs in the flip matrix and their largest probability differences."""
        flips: dict[tuple[int, int], int] = {}
        for pair in zip(
            self.primary_probabilities.argmax(axis=1).tolist(),
            candidate_probabilities.argmax(axis=1).tolist(),
            strict=True,
        ):
            flips[pair] = flips.get(pair, 0) + 1
        for (primary_label, candidate_label), count in flips.items():
            metrics.SHADOW_PAIRS.labels(
                self.primary, self.candidate, LABELS[primary_label], LABELS[candidate_label], self.language
            ).inc(count)
        histogram = metrics.SHADOW_PROBABILITY_DIFF.labels(self.primary, self.candidate)
        for difference in np.abs(self.primary_probabilities - candidate_probabilities).max(axis=1).tolist():
            histogram.observe(difference)


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
    active: int = 0  # requests inside the engine that resolved to this runtime (an unload waits for them)
    info_labels: tuple[str, ...] | None = None  # its xnli_variant_info labels while it serves
    drained: asyncio.Event | None = None  # made when it is retired; set once ``active`` falls to 0

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
        traffic_seed: int | None = None,
        shadow_max_queue_pairs: int = 256,
        shadow_timeout_s: float = 10.0,
        shadow_max_client_backlog_s: float = 0.1,
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
        self.started = False  # start-up loading finished (or failed): the repository may change variants
        self._loading: set[str] = set()
        self._unloading: set[str] = set()
        self._load_failures: dict[str, str] = {}  # the last failed repository load of a name, until one succeeds
        self._repository_tasks: set[asyncio.Task[Any]] = set()
        self.router = TrafficRouter(catalogue.traffic, catalogue.default_variant, traffic_seed)
        self.shadow_max_queue_pairs = shadow_max_queue_pairs
        self.shadow_timeout_s = shadow_timeout_s
        self.shadow_max_client_backlog_s = shadow_max_client_backlog_s
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        for shadow in catalogue.traffic.shadow:  # every series exists from the start: rates and ratios read 0
            metrics.SHADOW_SAMPLED_PAIRS.labels(shadow.primary, shadow.candidate)
            for reason in metrics.SHADOW_DROP_REASONS:
                metrics.SHADOW_DROPPED_PAIRS.labels(shadow.primary, shadow.candidate, reason)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def preflight(self) -> None:
        """Check every enabled variant's checkpoint without loading weights; raises the first CheckpointError.

        Reads each config and loads each fast tokenizer (converting a SentencePiece-only one), so a missing or broken
        tokenizer stops `xnli-serve serve` with exit code 2 before the port opens, like unmappable labels do.
        """
        for runtime in self.variants.values():
            if runtime.spec.enabled:
                self._check_faults(runtime.spec)
                runtime.info = inspect_checkpoint(runtime.spec)

    def _check_faults(self, spec: VariantSpec) -> None:
        if spec.faults is not None and not self.allow_faults:
            raise CheckpointError(
                spec.name,
                "declares [variant.faults] but fault injection is disabled "
                "(set XNLI_SERVE_ENABLE_FAULT_INJECTION=true, for tests only)",
            )

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
        finally:
            self.started = True

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
            )
            runtime.queue = queue
            runtime.worker = self._worker_for(str(info.device))
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
        """Stop taking new requests (readiness turns 503); what was accepted still finishes. Queued shadows are
        dropped: they never hold the drain."""
        self.draining = True
        for worker in list(self._workers.values()):
            worker.drop_shadows()

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
            raise UnknownVariantError(str(name or self.default_variant), served)
        return runtime

    def variant_ready(self, name: str) -> bool:
        """This variant alone serves now (others may be loading, reloading or failed): per-model readiness."""
        runtime = self.variants.get(name)
        return (
            runtime is not None
            and runtime.spec.enabled
            and runtime.status is VariantStatus.READY
            and self.live
            and not self.draining
        )

    # -- model repository: index, load (or reload) and unload variants while serving ----------------------------

    def catalogue_entry(self, name: str) -> VariantSpec:
        """``name``'s entry as the catalogue file says now (it may have been edited since start-up), enabled.

        Raises CatalogueError when the file cannot be used, UnknownVariantError when it has no such entry.
        """
        catalogue = load_catalogue(self.catalogue.source)
        try:
            spec = catalogue.get(name)
        except KeyError:
            raise UnknownVariantError(name, [variant.name for variant in catalogue.variants]) from None
        return spec.model_copy(update={"enabled": True})  # an explicit load serves it, whatever `enabled` says

    def repository_index(self) -> list[RepositoryEntry]:
        """Every variant the engine knows and every entry of the catalogue file, with its state and why."""
        names = list(dict.fromkeys([*self.variants, *self._loading, *self._load_failures]))
        try:
            names += [spec.name for spec in load_catalogue(self.catalogue.source).variants if spec.name not in names]
        except CatalogueError as error:
            log.warning("repository index lists loaded variants only: %s", error)
        return [self.repository_entry(name) for name in names]

    def repository_entry(self, name: str) -> RepositoryEntry:
        runtime = self.variants.get(name)
        failure = self._load_failures.get(name)
        serving = runtime is not None and runtime.spec.enabled and runtime.status is VariantStatus.READY
        if serving:
            notes = ["a new version is loading"] if name in self._loading else []
            notes += [f"the last load failed, this version still serves: {failure}"] if failure else []
            return RepositoryEntry(name, RepositoryState.READY, "; ".join(notes))
        if name in self._loading:
            return RepositoryEntry(name, RepositoryState.LOADING, "loading")
        if name in self._unloading:
            return RepositoryEntry(name, RepositoryState.UNAVAILABLE, "unloading: accepted requests are finishing")
        if failure:
            return RepositoryEntry(name, RepositoryState.UNAVAILABLE, f"the last load failed: {failure}")
        if runtime is None:
            return RepositoryEntry(name, RepositoryState.UNAVAILABLE, "in the catalogue, not loaded")
        status = runtime.status
        if status in (VariantStatus.PENDING, VariantStatus.LOADING, VariantStatus.WARMING_UP):
            return RepositoryEntry(name, RepositoryState.LOADING, str(status))
        reasons = {
            VariantStatus.FAILED: f"loading failed: {runtime.error}",
            VariantStatus.DISABLED: "disabled in the catalogue, not loaded",
            VariantStatus.UNLOADED: "unloaded",
        }
        return RepositoryEntry(name, RepositoryState.UNAVAILABLE, reasons.get(status, str(status)))

    def _claim(self, name: str) -> None:
        """Refuse a repository change that would race another one (or start-up, or shutdown)."""
        if self.draining:
            raise DrainingError("the service is shutting down and changes no variant")
        if not self.started:
            raise RepositoryBusyError("start-up is still loading the catalogue's variants; try again when it is ready")
        if name in self._loading or name in self._unloading:
            doing = "loaded" if name in self._loading else "unloaded"
            raise RepositoryBusyError(f"variant {name!r} is being {doing} already; try again when that has finished")

    async def _run_to_completion(self, work: Any) -> Any:
        """Run a repository change as its own task: a caller that goes away does not leave it half done."""
        task = asyncio.get_running_loop().create_task(work)
        self._repository_tasks.add(task)
        task.add_done_callback(self._repository_tasks.discard)
        return await asyncio.shield(task)

    async def load_variant(self, name: str, *, min_queue_pairs: int = 1) -> VariantRuntime:
        """Load (or reload) ``name`` from its catalogue entry as the file says now, then serve it.

        The new version is loaded, guarded and warmed up in a thread while the old one (if any) serves; then every
        request resolved from that moment on goes to the new version, and the old one finishes what it accepted and
        is freed. ``min_queue_pairs``: the largest request the API accepts, which the variant's queue must hold.
        A failure raises VariantLoadError (or UnknownVariantError) and leaves what served before serving.
        """
        self._claim(name)
        self._loading.add(name)
        return await self._run_to_completion(self._load_and_switch(name, min_queue_pairs))  # type: ignore[no-any-return]

    async def _load_and_switch(self, name: str, min_queue_pairs: int) -> VariantRuntime:
        try:
            try:
                runtime = await asyncio.to_thread(self._prepare_runtime, name, min_queue_pairs)
            except (CatalogueError, CheckpointError) as error:
                self._load_failures[name] = str(error)
                unexpected = error.__cause__ is not None and not isinstance(error.__cause__, CheckpointError)
                log.error("loading variant %s failed, nothing changed: %s", name, error)
                await asyncio.to_thread(release_freed_memory)
                raise VariantLoadError(name, str(error), server_fault=unexpected) from error
            old = self.variants.get(name)
            self.variants[name] = runtime  # the switch: requests resolved from now on run the new version
            self._load_failures.pop(name, None)
            log.info("variant %s now serves %s", name, runtime.spec.path)
            if old is not None:
                await self._retire(old, keep_labels=runtime.info_labels)
            return runtime
        finally:
            self._loading.discard(name)

    def _prepare_runtime(self, name: str, min_queue_pairs: int) -> VariantRuntime:
        """Runs in a thread: a complete new runtime, queued on its device but not yet reachable by requests."""
        spec = self.catalogue_entry(name)
        if spec.max_queue_pairs < min_queue_pairs:
            raise CheckpointError(
                name,
                f"max_queue_pairs={spec.max_queue_pairs} is below max_pairs_per_request={min_queue_pairs}: "
                "requests the API accepts would never fit its queue",
            )
        self._check_faults(spec)
        runtime = VariantRuntime(spec)
        self._load_variant(runtime)
        return runtime

    async def unload_variant(self, name: str) -> None:
        """Stop admitting requests for ``name``, let those accepted finish, then free its memory.

        Unloading a catalogue entry that is not loaded does nothing; a name neither loaded nor in the catalogue
        raises UnknownVariantError.
        """
        runtime = self.variants.get(name)
        if runtime is None or not runtime.spec.enabled:  # not loaded (disabled, unloaded, or never loaded)
            if name in self._loading:
                self._claim(name)  # raises: a load of it is running
            if runtime is None:
                self.catalogue_entry(name)  # raises UnknownVariantError unless the catalogue names it
            return
        self._claim(name)
        self._unloading.add(name)
        await self._run_to_completion(self._unload(name, runtime))

    async def _unload(self, name: str, runtime: VariantRuntime) -> None:
        try:
            self.variants[name] = VariantRuntime(
                runtime.spec.model_copy(update={"enabled": False}), status=VariantStatus.UNLOADED
            )
            self._load_failures.pop(name, None)
            await self._retire(runtime, keep_labels=None)
            for gauge in (metrics.QUEUE_DEPTH, metrics.SHADOW_QUEUE_DEPTH):  # gauges of a variant that is gone
                with contextlib.suppress(KeyError):  # (counters keep their history)
                    gauge.remove(name)
            log.info("variant %s unloaded", name)
        finally:
            self._unloading.discard(name)

    async def _retire(self, runtime: VariantRuntime, keep_labels: tuple[str, ...] | None) -> None:
        """Stop a runtime that requests can no longer resolve to: wait for the requests it accepted (each is bounded
        by its deadline), take its queue off the device, drop its labels and free its model."""
        runtime.status = VariantStatus.UNLOADING
        runtime.drained = asyncio.Event()
        if runtime.active:
            try:
                async with asyncio.timeout(self.request_timeout_s + 5.0):  # every request ends by its deadline
                    await runtime.drained.wait()
            except TimeoutError:
                log.warning("variant %s: %d requests still inside after the drain", runtime.spec.name, runtime.active)
        if runtime.worker is not None and runtime.queue is not None:
            runtime.worker.remove_queue(runtime.queue, "unloaded" if keep_labels is None else "replaced")
        if runtime.info_labels is not None and runtime.info_labels != keep_labels:
            metrics.VARIANT_INFO.remove(*runtime.info_labels)
        runtime.status = VariantStatus.UNLOADED
        runtime.info_labels = None
        if not runtime.active:  # nothing uses it any more: let go of the model, its runner and tokenizer
            runtime.queue = None
            runtime.worker = None
            runtime.encoder = None
            runtime.info = None
        release_export(runtime.execution)
        await asyncio.to_thread(free_memory)

    # -- inference ---------------------------------------------------------------------------------------------

    async def predict(
        self,
        pairs: Sequence[tuple[str, str]],
        variant: str | None = None,
        truncate: bool = True,
        timeout_s: float | None = None,
        *,
        priority: Priority = Priority.INTERACTIVE,
        language: str | None = None,
    ) -> PredictionResult:
        """Tokenize off the event loop, queue every pair, and wait until the batches carrying them have run.

        ``timeout_s`` may shorten the engine's request timeout, never lengthen it. ``priority`` BATCH queues behind
        every interactive pair on the device. ``language`` (an ISO 639-1 code) labels the prediction and shadow
        counters. Once answered, the catalogue's shadows of this variant get their sample of the pairs, without
        delaying this answer. Raises an EngineError subclass: UnknownVariantError, VariantNotReadyError,
        InputTooLongError, OverloadedError, DeadlineExceededError, DrainingError or InferenceError; each is counted
        in xnli_request_failures_total.
        """
        if priority is Priority.SHADOW:
            raise ValueError("shadow priority is reserved for the engine's own shadow work")
        runtime = self.resolve(variant)
        name = runtime.spec.name
        language_label = metrics.language_label(language)
        self.inflight += 1
        runtime.active += 1
        metrics.INFLIGHT_REQUESTS.inc()
        metrics.PRIORITY_REQUESTS.labels(name, priority.label).inc()
        try:
            result = await self._predict(runtime, pairs, truncate, timeout_s, priority, language_label)
            if name in self.router.shadows:
                self._start_shadows(name, pairs, result, truncate, language_label)
            return result
        except EngineError as error:
            metrics.REQUEST_FAILURES.labels(name, error.reason).inc()
            raise
        except asyncio.CancelledError:
            metrics.REQUEST_FAILURES.labels(name, "disconnected").inc()
            raise
        finally:
            self.inflight -= 1
            runtime.active -= 1
            if runtime.active == 0 and runtime.drained is not None:
                runtime.drained.set()
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
        self,
        runtime: VariantRuntime,
        pairs: Sequence[tuple[str, str]],
        truncate: bool,
        timeout_s: float | None,
        priority: Priority = Priority.INTERACTIVE,
        language: str = metrics.UNSPECIFIED_LANGUAGE,
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
        reservation = runtime.worker.admit(runtime.queue, len(pairs), deadline, priority)
        try:
            encoded = await self._tokenize(runtime.encoder, pairs, truncate)
            tokenized = time.perf_counter()
            metrics.TOKENIZATION_DURATION.labels(name).observe(tokenized - started)
            request = InferenceRequest(len(encoded.ids), loop, deadline, language)
            runtime.worker.submit(runtime.queue, request, encoded.ids, reservation, priority)
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

    # -- live traffic between variants ---------------------------------------------------------------------------

    def route(self, variant: str | None, routing_key: str | None = None) -> VariantRuntime:
        """The variant that answers a request: ``variant`` when named, else the catalogue's ``[traffic] split``
        (sticky for a routing key; among the split variants serving now), else the default variant. Counted in
        xnli_routed_requests_total."""
        decision = self.router.choose(variant, routing_key, self.variant_ready)
        runtime = self.resolve(decision.variant)
        metrics.ROUTED_REQUESTS.labels(runtime.spec.name, str(decision.route)).inc()
        return runtime

    def _start_shadows(
        self,
        primary: str,
        pairs: Sequence[tuple[str, str]],
        result: PredictionResult,
        truncate: bool,
        language: str,
    ) -> None:
        """Sample the answered pairs for each shadow of ``primary`` and start its comparison as a background task.
        Nothing here may fail the client's answer: errors are logged and counted as dropped pairs."""
        for shadow in self.router.shadows[primary]:
            chosen: list[int] = []
            try:
                chosen = self.router.sample(shadow, len(pairs))
                if not chosen:
                    continue
                metrics.SHADOW_SAMPLED_PAIRS.labels(primary, shadow.candidate).inc(len(chosen))
                job = ShadowJob(
                    primary,
                    shadow.candidate,
                    [pairs[index] for index in chosen],
                    result.probabilities[chosen],
                    truncate,
                    language,
                )
                task = asyncio.get_running_loop().create_task(self._run_shadow(job))
                self._shadow_tasks.add(task)
                task.add_done_callback(self._shadow_tasks.discard)
            except Exception:
                log.exception("could not start the shadow %s -> %s", primary, shadow.candidate)
                metrics.SHADOW_DROPPED_PAIRS.labels(primary, shadow.candidate, "error").inc(len(chosen))

    async def _run_shadow(self, job: ShadowJob) -> None:
        """Run the job's pairs on its candidate in the shadow lane and compare with the primary's answers; every
        outcome other than a comparison is a counted drop. Never raises (but lets cancellation through)."""
        try:
            reason = await self._shadow_compare(job)
        except asyncio.CancelledError:
            job.drop("draining")
            raise
        except Exception:
            log.exception("shadow %s -> %s failed", job.primary, job.candidate)
            reason = "error"
        if reason is not None:
            job.drop(reason)

    async def _shadow_compare(self, job: ShadowJob) -> str | None:
        """None once compared and counted, else the reason the pairs were dropped."""
        candidate, pairs, truncate = job.candidate, job.pairs, job.truncate
        if self.draining:
            return "draining"
        runtime = self.variants.get(candidate)
        if runtime is None or runtime.status is not VariantStatus.READY:
            return "not_ready"
        queue, worker, encoder = runtime.queue, runtime.worker, runtime.encoder
        assert queue is not None
        assert worker is not None
        assert encoder is not None
        limits = (self.shadow_max_queue_pairs, self.shadow_max_client_backlog_s)
        try:
            reservation = worker.admit_shadow(queue, len(pairs), *limits)
        except ShadowRefused as refused:
            return refused.reason
        loop = asyncio.get_running_loop()
        deadline = time.perf_counter() + self.shadow_timeout_s
        try:
            if sum(len(premise) + len(hypothesis) for premise, hypothesis in pairs) <= INLINE_TOKENIZATION_CHARS:
                encoded = encoder.encode(pairs, truncate)
            elif self._tokenizing_pairs:  # client requests are waiting for the tokenizer threads: they go first
                return "busy"
            else:
                encoded = await loop.run_in_executor(self._tokenize_pool, encoder.encode, pairs, truncate)
            request = InferenceRequest(len(pairs), loop, deadline, job.language)
            worker.submit(
                queue,
                request,
                encoded.ids,
                reservation,
                Priority.SHADOW,
                max_shadow_pairs=limits[0],
                max_client_backlog_s=limits[1],
            )
        except ShadowRefused as refused:
            return refused.reason
        except InputTooLongError:
            return "too_long"
        finally:
            worker.release(reservation)
        try:
            async with asyncio.timeout_at(loop.time() + self.shadow_timeout_s):
                await request.future
        except TimeoutError:
            request.abandon("deadline")
            return "expired"
        except ShadowRefused as refused:
            return refused.reason
        except DeadlineExceededError:
            return "expired"
        except EngineError:
            return "failed"
        except asyncio.CancelledError:
            request.abandon("disconnected")
            raise
        job.record(request.probabilities)
        return None

    async def wait_shadows(self) -> None:
        """Return once every shadow started so far was compared or dropped (tests and benchmarks use it)."""
        while self._shadow_tasks:
            await asyncio.gather(*list(self._shadow_tasks), return_exceptions=True)
