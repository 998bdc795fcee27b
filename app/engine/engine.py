"""The engine facade: variants, their queues and device workers. Knows nothing of HTTP.

Drive it from the API, a test or a benchmark alike:

    engine = Engine(load_catalogue(path)); engine.preflight(); engine.load()
    result = await engine.submit(EngineRequest([("premise", "hypothesis")], variant="xlmr-mnli"))
    result = await engine.predict([("premise", "hypothesis")], variant="xlmr-mnli")  # the same, for tests

Every caller, in this process or in a front end (``app.multiprocess``), speaks the contract in ``contract``: an
EngineRequest in, an EngineResult out. The Engine holds its parts as objects: a ``RequestGate`` (routing, timeout,
draining, requests inside), the ``ModelRepository`` (the variants and every change to them) and the ``ShadowRunner``.

While it serves, the model repository methods change what it serves: ``await engine.load_variant(name)`` re-reads
that name's catalogue entry and loads it beside the version serving now, then switches to it at once;
``await engine.unload_variant(name)`` stops admitting its requests, lets accepted ones finish and frees its memory.

By job: ``status`` (variant status, a variant's runtime, its description and admission), ``models/`` (the
catalogue, loading a checkpoint into a warmed-up queue on a device worker, the repository that loads and unloads while
serving),
``traffic/`` (split and shadows), ``tokenization``, and the batcher (``scheduler/``). This module keeps start-up,
drain, readiness and the prediction path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from app import metrics, tracing
from app.engine.contract import EngineRequest, EngineResult, Priority, Timings
from app.engine.errors import DeadlineExceededError, EngineError, VariantNotReadyError
from app.engine.gate import RequestGate
from app.engine.models.catalogue import Catalogue
from app.engine.models.loading import DeviceWorkers, warmup_shapes
from app.engine.models.repository import ModelRepository
from app.engine.scheduler.requests import InferenceRequest
from app.engine.scheduler.runner import logits_of, probabilities_of
from app.engine.status import RepositoryEntry, RepositoryState, VariantRuntime, VariantStatus
from app.engine.tokenization import (
    DEFAULT_MAX_TOKENIZING_CHARS,
    INLINE_TOKENIZATION_CHARS,
    EncodedPairs,
    TokenizationPool,
    checked_encoding,
)
from app.engine.traffic.shadows import ShadowJob, ShadowRunner
from app.engine.traffic.split import TrafficRouter
from app.tracing import spans as trace_spans

__all__ = [
    "INLINE_TOKENIZATION_CHARS",
    "Engine",
    "RepositoryEntry",
    "RepositoryState",
    "ShadowJob",
    "VariantRuntime",
    "VariantStatus",
    "warmup_shapes",
]

log = logging.getLogger(__name__)


class Engine:
    """Variants, their queues and device workers behind one contract: ``submit`` an EngineRequest, get an
    EngineResult. Knows nothing of HTTP; a front-end process reaches it through ``app.multiprocess``."""

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
        # The one table of variants: the gate resolves requests against it, the repository changes it.
        self.variants: dict[str, VariantRuntime] = {spec.name: VariantRuntime(spec) for spec in catalogue.variants}
        for runtime in self.variants.values():
            if not runtime.spec.enabled:
                runtime.status = VariantStatus.DISABLED
        self._devices = DeviceWorkers(worker_pipeline)
        self._torch_threads = torch_threads
        self.tokenization = TokenizationPool(tokenization_workers, max_tokenizing_pairs, max_tokenizing_chars)
        self.load_error: str | None = None
        router = TrafficRouter(catalogue.traffic, catalogue.default_variant, traffic_seed)
        self.gate = RequestGate(self.variants, catalogue.default_variant, router, request_timeout_s, self.variant_ready)
        self.repository = ModelRepository(
            catalogue,
            self.variants,
            self.gate,
            self._devices,
            torch_threads=torch_threads,
            allow_faults=allow_faults,
            export_cache_dir=export_cache_dir,
        )
        self.shadows = ShadowRunner(
            self.gate,
            self.tokenization,
            catalogue.traffic.shadow,
            shadow_max_queue_pairs,
            shadow_timeout_s,
            shadow_max_client_backlog_s,
        )

    @property
    def default_variant(self) -> str:
        return self.gate.default_variant

    @property
    def draining(self) -> bool:
        return self.gate.draining

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def preflight(self) -> None:
        """Check every enabled variant's checkpoint without loading weights; raises the first CheckpointError.

        Reads each config and loads each fast tokenizer (converting a SentencePiece-only one), so a missing or broken
        tokenizer stops `xnli-serve serve` with exit code 2 before the port opens, like unmappable labels do.
        """
        self.repository.preflight()

    def load(self) -> None:
        """Load, warm up and start serving every enabled variant (blocking; the API runs it in a thread)."""
        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)
        try:
            self.repository.load_enabled()
        except Exception as error:
            self.load_error = str(error)
            raise

    def begin_drain(self) -> None:
        """Stop taking new requests (readiness turns 503); what was accepted still finishes. Queued shadows are
        dropped: they never hold the drain."""
        self.gate.begin_drain()
        for worker in self._devices:
            worker.drop_shadows()

    async def wait_idle(self) -> None:
        """Return once no request is inside the engine (bound it with asyncio.timeout)."""
        await self.gate.wait_idle()

    @property
    def inflight(self) -> int:
        """Requests inside the engine now."""
        return self.gate.inflight

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
            and not self.gate.draining
            and all(runtime.status is VariantStatus.READY for runtime in self.variants.values() if runtime.spec.enabled)
        )

    @property
    def live(self) -> bool:
        """False once loading failed or a device worker died: the process should be restarted."""
        return self.load_error is None and all(worker.alive for worker in self._devices)

    def resolve(self, name: str | None) -> VariantRuntime:
        return self.gate.resolve(name)

    def route(self, variant: str | None, routing_key: str | None = None) -> VariantRuntime:
        """The variant that answers a request (see ``RequestGate.route``); counted in xnli_routed_requests_total."""
        return self.gate.route(variant, routing_key)

    def variant_ready(self, name: str) -> bool:
        """This variant alone serves now (others may be loading, reloading or failed): per-model readiness."""
        runtime = self.variants.get(name)
        return (
            runtime is not None
            and runtime.spec.enabled
            and runtime.status is VariantStatus.READY
            and self.live
            and not self.gate.draining
        )

    # -- model repository --------------------------------------------------------------------------------------

    def repository_index(self) -> list[RepositoryEntry]:
        """Every variant the engine knows and every entry of the catalogue file, with its state and why."""
        return self.repository.index()

    def repository_entry(self, name: str) -> RepositoryEntry:
        return self.repository.entry(name)

    async def load_variant(self, name: str, *, min_queue_pairs: int = 1) -> VariantRuntime:
        """Load (or reload) ``name`` from its catalogue entry as the file says now, then serve it (see
        ``ModelRepository.load_variant``)."""
        return await self.repository.load_variant(name, min_queue_pairs=min_queue_pairs)

    async def unload_variant(self, name: str) -> None:
        """Stop admitting requests for ``name``, let those accepted finish, then free its memory."""
        await self.repository.unload_variant(name)

    async def wait_shadows(self) -> None:
        """Return once every shadow started so far was compared or dropped (tests and benchmarks use it)."""
        await self.shadows.wait()

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
    ) -> EngineResult:
        """A convenience for tests, benchmarks and the in-process evaluation: ``submit`` an EngineRequest built from
        these arguments (``variant`` None: the default variant, not the traffic split). Services call ``submit``."""
        name = self.gate.resolve(variant).spec.name
        return await self.submit(EngineRequest(pairs, name, truncate, timeout_s, priority, language))

    async def submit(self, request: EngineRequest) -> EngineResult:
        """Tokenize off the event loop (unless a front end sent the ids), queue every pair, and wait until the
        batches carrying them have run.

        The answer is due within the request's timeout less the time it already spent. ``priority`` BATCH queues
        behind every interactive pair on the device. Once answered, the catalogue's shadows of this variant get their
        sample of the pairs, without delaying this answer. Raises an EngineError subclass: UnknownVariantError,
        VariantNotReadyError, InputTooLongError, OverloadedError, RequestTooLargeError, DeadlineTooShortError,
        DeadlineExceededError, DrainingError or InferenceError; each but the first is counted in
        xnli_request_failures_total.
        """
        gate = self.gate
        gate.refuse_shadow_priority(request.priority)
        runtime = gate.resolve(request.variant)
        name = runtime.spec.name
        language = metrics.language_label(request.language)
        gate.enter()
        runtime.active += 1
        metrics.INFLIGHT_REQUESTS.inc()
        metrics.PRIORITY_REQUESTS.labels(name, request.priority.label).inc()
        # Tracing (issue #27): the request's span in the engine, None unless tracing is on and the request sampled.
        trace = self._trace(runtime, request) if tracing.STATE.active else None
        try:
            result, used = await self._run(runtime, request, language, trace)
            if self.shadows.shadowed(name):
                primary = None if trace is None else trace.context
                self.shadows.start(name, request.pairs, result, request.truncate, language, used, primary)
            return result
        except EngineError as error:
            metrics.REQUEST_FAILURES.labels(name, error.reason).inc()
            if trace is not None:
                trace.span.set_attribute("error.type", error.reason)
                trace_spans.end(trace.span, error.reason)
                trace = None
            raise
        except asyncio.CancelledError:
            metrics.REQUEST_FAILURES.labels(name, "disconnected").inc()
            if trace is not None:
                trace.span.set_attribute("error.type", "disconnected")
            raise
        finally:
            if trace is not None:
                trace.span.end()
            runtime.active -= 1
            if runtime.active == 0 and runtime.drained is not None:
                runtime.drained.set()
            metrics.INFLIGHT_REQUESTS.dec()
            gate.leave()

    @staticmethod
    def _trace(runtime: VariantRuntime, request: EngineRequest) -> trace_spans.RequestTrace | None:
        """Tracing (issue #27): the engine's span of a request, in the caller's context (the transport's span, or the
        front end's in the engine process); None when it is not sampled."""
        spec = runtime.spec
        span = trace_spans.start_span(
            "engine request",
            {
                "xnli.variant": spec.name,
                "xnli.priority": request.priority.label,
                "xnli.pairs": len(request.pairs),
                "xnli.language": request.language or "",
                "xnli.request_id": request.request_id or "",
            },
        )
        if span is None:
            return None
        device = runtime.worker.device if runtime.worker is not None else spec.device
        batch = {
            "xnli.variant": spec.name,
            "xnli.backend": spec.backend,
            "xnli.device": device,
            "xnli.graph": spec.graph,
        }
        return trace_spans.RequestTrace(span, batch)

    async def _run(
        self,
        runtime: VariantRuntime,
        request: EngineRequest,
        language: str,
        trace: trace_spans.RequestTrace | None = None,
    ) -> tuple[EngineResult, tuple[EncodedPairs, str]]:
        """The answer, and the encoding its pairs ran with and its encoder's fingerprint (for the shadows)."""
        name = runtime.spec.name
        self.gate.refuse_while_draining()
        if runtime.status is not VariantStatus.READY:
            raise VariantNotReadyError(name, str(runtime.status))
        encoder = runtime.encoder
        assert encoder is not None
        pairs = request.pairs
        timeout = self.gate.timeout(request.timeout_s)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        # Admission judges the whole timeout, as when the request arrives here (a deadline too short for the variant
        # is the client's error, whatever a front end spent); the answer is due ``spent_s`` earlier.
        deadline = started + timeout - request.spent_s
        earlier = 0.0  # tokenization done before this call, by the front end
        try:
            admitting = runtime.admit(len(pairs), started + timeout, request.priority)
        except EngineError as refused:
            if trace is not None:  # tracing (issue #27): the refusal is the admission span's
                trace_spans.record(trace.span, "admission", started, time.perf_counter(), error=refused.reason)
            raise
        with admitting as admission:
            if trace is not None:
                admitted = time.perf_counter()
                trace_spans.record(trace.span, "admission", started, admitted)
            given = request.encoded
            if given is not None and given.fingerprint == encoder.fingerprint:
                encoded = checked_encoding(EncodedPairs(given.ids, given.truncated), len(pairs), encoder.max_seq_len)
                tokenized = time.perf_counter()
                earlier = request.spent_s
                metrics.TOKENIZATION_DURATION.labels(name).observe(earlier + tokenized - started)
            else:
                encoded = await self.tokenization.encode(encoder, pairs, request.truncate)
                tokenized = time.perf_counter()
                metrics.TOKENIZATION_DURATION.labels(name).observe(tokenized - started)
                if trace is not None:
                    trace_spans.record(trace.span, "tokenization", admitted, tokenized, {"xnli.pairs": len(pairs)})
            waiting = InferenceRequest(len(encoded.ids), loop, deadline, language)
            waiting.trace = trace
            admission.submit(waiting, encoded.ids)
        try:
            async with asyncio.timeout_at(loop.time() + max(0.0, deadline - time.perf_counter())):
                await waiting.future
        except TimeoutError:
            waiting.abandon("deadline")  # the batcher drops its pairs that have not run yet
            if trace is not None:
                trace_spans.record(
                    trace.span,
                    "queue wait",
                    waiting.enqueued_at,
                    time.perf_counter(),
                    links=trace.batches,
                    error="deadline",
                )
            raise DeadlineExceededError(
                f"no answer within the {timeout:.3f}s deadline; the request's remaining pairs were dropped"
            ) from None
        except asyncio.CancelledError:
            waiting.abandon("disconnected")
            raise
        queue_s = max(0.0, waiting.done_at - waiting.enqueued_at - waiting.compute_s)
        if trace is None:
            metrics.QUEUE_DURATION.labels(name).observe(queue_s)
        else:  # tracing (issue #27): until the last batch carrying its pairs began; the trace id as exemplar
            trace_spans.record(
                trace.span,
                "queue wait",
                waiting.enqueued_at,
                trace.batch_started or waiting.done_at,
                {"xnli.queue_s": queue_s, "xnli.compute_s": waiting.compute_s, "xnli.batches": len(trace.batches)},
                links=trace.batches,
            )
            metrics.QUEUE_DURATION.labels(name).observe(queue_s, tracing.exemplar(trace.span))
        finished = time.perf_counter()
        result = EngineResult(
            variant=name,
            probabilities=probabilities_of(waiting.outputs),
            logits=logits_of(waiting.outputs),  # issue #26
            truncated=encoded.truncated,
            timings=Timings(earlier + tokenized - started, queue_s, waiting.compute_s, earlier + finished - started),
        )
        return result, (encoded, encoder.fingerprint)
