"""The engine facade: variants, their queues and device workers. Knows nothing of HTTP.

Drive it from the API, a test or a benchmark alike:

    engine = Engine(load_catalogue(path)); engine.preflight(); engine.load()
    result = await engine.predict([("premise", "hypothesis")], variant="xlmr-mnli")

While it serves, the model repository methods change what it serves: ``await engine.load_variant(name)`` re-reads
that name's catalogue entry and loads it beside the version serving now, then switches to it at once;
``await engine.unload_variant(name)`` stops admitting its requests, lets accepted ones finish and frees its memory.

By job: ``status`` (variant status, results, a variant's description), ``models/`` (the catalogue, loading a
checkpoint into a warmed-up queue on a device worker, the repository that loads and unloads while serving),
``traffic/`` (split and shadows), ``tokenization``, and the batcher (``scheduler/``). This module keeps start-up,
drain, readiness and the prediction path, and re-exports the names others import from it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from app import metrics
from app.engine.errors import (
    DeadlineExceededError,
    EngineError,
    VariantNotReadyError,
)
from app.engine.gate import Inflight, refuse_while_draining, request_timeout, resolve_variant
from app.engine.models.catalogue import Catalogue
from app.engine.models.loading import DeviceWorkers, check_faults, load_runtime, warmup_shapes
from app.engine.models.repository import ModelRepository
from app.engine.models.store import inspect_checkpoint
from app.engine.scheduler.requests import InferenceRequest, Priority
from app.engine.status import (
    PredictionResult,
    RepositoryEntry,
    RepositoryState,
    Timings,
    VariantRuntime,
    VariantStatus,
)
from app.engine.tokenization import (
    DEFAULT_MAX_TOKENIZING_CHARS,
    INLINE_TOKENIZATION_CHARS,
    EncodedPairs,
    TokenizationPool,
    checked_encoding,
)
from app.engine.traffic.shadows import ShadowJob, ShadowRunner
from app.engine.traffic.split import TrafficRouter

__all__ = [
    "INLINE_TOKENIZATION_CHARS",
    "Engine",
    "PredictionResult",
    "RepositoryEntry",
    "RepositoryState",
    "ShadowJob",
    "Timings",
    "VariantRuntime",
    "VariantStatus",
    "warmup_shapes",
]

log = logging.getLogger(__name__)


class Engine(ModelRepository, ShadowRunner):
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
        max_tokenizing_chars: int = DEFAULT_MAX_TOKENIZING_CHARS,
        traffic_seed: int | None = None,
        shadow_max_queue_pairs: int = 256,
        shadow_timeout_s: float = 10.0,
        shadow_max_client_backlog_s: float = 0.1,
        worker_pipeline: bool | None = None,
    ) -> None:
        ModelRepository.__init__(self)
        ShadowRunner.__init__(
            self, catalogue.traffic.shadow, shadow_max_queue_pairs, shadow_timeout_s, shadow_max_client_backlog_s
        )
        self.catalogue = catalogue
        self.default_variant = catalogue.default_variant
        self.variants = {spec.name: VariantRuntime(spec) for spec in catalogue.variants}
        for runtime in self.variants.values():
            if not runtime.spec.enabled:
                runtime.status = VariantStatus.DISABLED
        self._devices = DeviceWorkers(worker_pipeline)
        self.tokenization = TokenizationPool(tokenization_workers, max_tokenizing_pairs, max_tokenizing_chars)
        self._torch_threads = torch_threads
        self.request_timeout_s = request_timeout_s
        self.allow_faults = allow_faults
        self.export_cache_dir = export_cache_dir
        self.load_error: str | None = None
        self.draining = False
        self._inflight = Inflight()
        self.started = False  # start-up loading finished (or failed): the repository may change variants
        self.router = TrafficRouter(catalogue.traffic, catalogue.default_variant, traffic_seed)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def preflight(self) -> None:
        """Check every enabled variant's checkpoint without loading weights; raises the first CheckpointError.

        Reads each config and loads each fast tokenizer (converting a SentencePiece-only one), so a missing or broken
        tokenizer stops `xnli-serve serve` with exit code 2 before the port opens, like unmappable labels do.
        """
        for runtime in self.variants.values():
            if runtime.spec.enabled:
                check_faults(runtime.spec, self.allow_faults)
                runtime.info = inspect_checkpoint(runtime.spec)

    def load(self) -> None:
        """Load, warm up and start serving every enabled variant (blocking; the API runs it in a thread)."""
        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)
        try:
            for runtime in self.variants.values():
                if runtime.spec.enabled:
                    load_runtime(runtime, self._devices, self._torch_threads, self.export_cache_dir)
        except Exception as error:
            self.load_error = str(error)
            raise
        finally:
            self.started = True

    def begin_drain(self) -> None:
        """Stop taking new requests (readiness turns 503); what was accepted still finishes. Queued shadows are
        dropped: they never hold the drain."""
        self.draining = True
        for worker in self._devices:
            worker.drop_shadows()

    async def wait_idle(self) -> None:
        """Return once no request is inside the engine (bound it with asyncio.timeout)."""
        await self._inflight.wait_idle()

    @property
    def inflight(self) -> int:
        """Requests inside the engine now."""
        return self._inflight.count

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish queued work, then stop the workers and the tokenizer pool."""
        for worker in self._devices:
            worker.stop(timeout)
        self.tokenization.close()

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
        return self.load_error is None and all(worker.alive for worker in self._devices)

    def resolve(self, name: str | None) -> VariantRuntime:
        return resolve_variant(self.variants, self.default_variant, name)

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
        spent_s: float = 0.0,
    ) -> PredictionResult:
        """Tokenize off the event loop, queue every pair, and wait until the batches carrying them have run.

        ``timeout_s`` may shorten the engine's request timeout, never lengthen it. ``priority`` BATCH queues behind
        every interactive pair on the device. ``language`` (an ISO 639-1 code) labels the prediction and shadow
        counters. Once answered, the catalogue's shadows of this variant get their sample of the pairs, without
        delaying this answer. Raises an EngineError subclass: UnknownVariantError, VariantNotReadyError,
        InputTooLongError, OverloadedError, DeadlineExceededError, DrainingError or InferenceError; each is counted
        in xnli_request_failures_total. ``spent_s``: time the request already spent before this call (in a front-end
        process): its deadline is that much nearer.
        """
        return await self._serve(pairs, None, variant, truncate, timeout_s, priority, language, spent_s)

    async def predict_encoded(
        self,
        pairs: Sequence[tuple[str, str]],
        encoded: EncodedPairs,
        fingerprint: str,
        variant: str | None = None,
        truncate: bool = True,
        timeout_s: float | None = None,
        *,
        priority: Priority = Priority.INTERACTIVE,
        language: str | None = None,
        tokenization_s: float = 0.0,
    ) -> PredictionResult:
        """``predict`` for pairs a front-end process already tokenized with the variant's ``PairEncoder`` (same
        truncation and length refusals): admission, routing, priority, deadline, shadows and metrics are the same,
        and this process does not tokenize them. ``fingerprint`` is the encoder's: if it is not the one this variant
        serves with now (a reload changed its tokenizer since the front end loaded it), the pairs are tokenized here
        as ``predict`` does. The pairs also feed the shadows whose candidate tokenizes differently.
        ``tokenization_s``: how long the front end took to encode them (observed and reported as tokenization); the
        request's deadline is that much nearer, as if it had been tokenized here."""
        given = (encoded, fingerprint, tokenization_s)
        return await self._serve(pairs, given, variant, truncate, timeout_s, priority, language, tokenization_s)

    async def _serve(
        self,
        pairs: Sequence[tuple[str, str]],
        given: tuple[EncodedPairs, str, float] | None,
        variant: str | None,
        truncate: bool,
        timeout_s: float | None,
        priority: Priority,
        language: str | None,
        spent_s: float = 0.0,
    ) -> PredictionResult:
        if priority is Priority.SHADOW:
            raise ValueError("shadow priority is reserved for the engine's own shadow work")
        runtime = self.resolve(variant)
        name = runtime.spec.name
        language_label = metrics.language_label(language)
        self._inflight.enter()
        runtime.active += 1
        metrics.INFLIGHT_REQUESTS.inc()
        metrics.PRIORITY_REQUESTS.labels(name, priority.label).inc()
        try:
            result, used = await self._predict(
                runtime, pairs, truncate, timeout_s, priority, language_label, given, spent_s
            )
            if name in self.router.shadows:
                self._start_shadows(name, pairs, result, truncate, language_label, used)
            return result
        except EngineError as error:
            metrics.REQUEST_FAILURES.labels(name, error.reason).inc()
            raise
        except asyncio.CancelledError:
            metrics.REQUEST_FAILURES.labels(name, "disconnected").inc()
            raise
        finally:
            runtime.active -= 1
            if runtime.active == 0 and runtime.drained is not None:
                runtime.drained.set()
            metrics.INFLIGHT_REQUESTS.dec()
            self._inflight.leave()

    async def _predict(
        self,
        runtime: VariantRuntime,
        pairs: Sequence[tuple[str, str]],
        truncate: bool,
        timeout_s: float | None,
        priority: Priority = Priority.INTERACTIVE,
        language: str = metrics.UNSPECIFIED_LANGUAGE,
        given: tuple[EncodedPairs, str, float] | None = None,
        spent_s: float = 0.0,
    ) -> tuple[PredictionResult, tuple[EncodedPairs, str]]:
        """The answer, and the encoding its pairs ran with and its encoder's fingerprint (for the shadows)."""
        name = runtime.spec.name
        refuse_while_draining(self.draining)
        if runtime.status is not VariantStatus.READY:
            raise VariantNotReadyError(name, str(runtime.status))
        encoder = runtime.encoder
        assert encoder is not None
        assert runtime.queue is not None
        assert runtime.worker is not None
        timeout = request_timeout(self.request_timeout_s, timeout_s)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        # Admission judges the whole timeout, as when the request arrives here (a deadline too short for the variant
        # is the client's error, whatever a front end spent); the answer is due ``spent_s`` earlier.
        reservation = runtime.worker.admit(runtime.queue, len(pairs), started + timeout, priority)
        deadline = started + timeout - spent_s
        earlier = 0.0  # tokenization done before this call, by the front end
        try:
            if given is not None and given[1] == encoder.fingerprint:
                encoded = checked_encoding(given[0], len(pairs), encoder.max_seq_len)
                tokenized = time.perf_counter()
                earlier = given[2]
                metrics.TOKENIZATION_DURATION.labels(name).observe(earlier + tokenized - started)
            else:
                encoded = await self.tokenization.encode(encoder, pairs, truncate)
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
        result = PredictionResult(
            variant=name,
            probabilities=request.probabilities,
            truncated=encoded.truncated,
            timings=Timings(earlier + tokenized - started, queue_s, request.compute_s, earlier + finished - started),
        )
        return result, (encoded, encoder.fingerprint)

    # -- live traffic between variants ---------------------------------------------------------------------------

    def route(self, variant: str | None, routing_key: str | None = None) -> VariantRuntime:
        """The variant that answers a request: ``variant`` when named, else the catalogue's ``[traffic] split``
        (sticky for a routing key; among the split variants serving now), else the default variant. Counted in
        xnli_routed_requests_total."""
        decision = self.router.choose(variant, routing_key, self.variant_ready)
        runtime = self.resolve(decision.variant)
        metrics.ROUTED_REQUESTS.labels(runtime.spec.name, str(decision.route)).inc()
        return runtime
