"""Shadow traffic: a sample of the pairs a primary variant answered runs again on a candidate in the shadow lane,
and the two answers are compared (flip matrix, largest probability difference). Nothing here may delay or fail a
client's answer: every outcome other than a comparison is a counted drop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from app import metrics, tracing
from app.engine.contract import EngineResult
from app.engine.errors import DeadlineExceededError, EngineError, InputTooLongError, OverloadedError
from app.engine.gate import RequestGate
from app.engine.models.catalogue import ShadowSpec
from app.engine.scheduler.requests import InferenceRequest, ShadowRefused
from app.engine.scheduler.runner import probabilities_of
from app.engine.status import VariantRuntime, VariantStatus
from app.engine.tasks.nli import LABELS
from app.engine.tokenization import EncodedPairs, TokenizationPool
from app.tracing import spans as trace_spans

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ShadowJob:
    """Pairs a primary answered, sampled to be run again on a candidate and compared."""

    primary: str
    candidate: str
    pairs: list[tuple[str, str]]
    primary_probabilities: npt.NDArray[np.float32]
    truncate: bool
    language: str
    # The primary's encoding of these pairs and its encoder's fingerprint: a candidate with the same fingerprint
    # runs them as they are, any other tokenizes the pairs itself.
    encoded: tuple[list[list[int]], str] | None = None
    primary_trace: SpanContext | None = None  # tracing (issue #27): the primary's request span, which it links to

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


class ShadowRunner:
    """Starts, runs and counts the shadow comparisons of the requests the engine answered."""

    def __init__(
        self,
        gate: RequestGate[VariantRuntime],
        tokenization: TokenizationPool,
        shadows: Sequence[ShadowSpec],
        max_queue_pairs: int,
        timeout_s: float,
        max_client_backlog_s: float,
    ) -> None:
        self.max_queue_pairs = max_queue_pairs
        self.timeout_s = timeout_s
        self.max_client_backlog_s = max_client_backlog_s
        self._gate = gate  # the variants, the router's shadow list and sampling, draining
        self._tokenization = tokenization
        self._tasks: set[asyncio.Task[None]] = set()
        for shadow in shadows:  # every series exists from the start: rates and ratios read 0
            metrics.SHADOW_SAMPLED_PAIRS.labels(shadow.primary, shadow.candidate)
            for reason in metrics.SHADOW_DROP_REASONS:
                metrics.SHADOW_DROPPED_PAIRS.labels(shadow.primary, shadow.candidate, reason)

    def shadowed(self, primary: str) -> bool:
        """``primary`` has shadows: its answered requests are sampled for them."""
        return primary in self._gate.router.shadows

    @property
    def running(self) -> int:
        """Comparisons started and not yet compared or dropped."""
        return len(self._tasks)

    def start(
        self,
        primary: str,
        pairs: Sequence[tuple[str, str]],
        result: EngineResult,
        truncate: bool,
        language: str,
        encoded: tuple[EncodedPairs, str] | None = None,
        primary_trace: SpanContext | None = None,
    ) -> None:
        """Sample the answered pairs for each shadow of ``primary`` and start its comparison as a background task.
        Nothing here may fail the client's answer: errors are logged and counted as dropped pairs."""
        router = self._gate.router
        for shadow in router.shadows[primary]:
            chosen: list[int] = []
            try:
                chosen = router.sample(shadow, len(pairs))
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
                    None if encoded is None else ([encoded[0].ids[index] for index in chosen], encoded[1]),
                    primary_trace,
                )
                task = asyncio.get_running_loop().create_task(self._run(job))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            except Exception:
                log.exception("could not start the shadow %s -> %s", primary, shadow.candidate)
                metrics.SHADOW_DROPPED_PAIRS.labels(primary, shadow.candidate, "error").inc(len(chosen))

    async def _run(self, job: ShadowJob) -> None:
        """Run the job's pairs on its candidate in the shadow lane and compare with the primary's answers; every
        outcome other than a comparison is a counted drop. Never raises (but lets cancellation through)."""
        trace = self._trace(job) if tracing.STATE.active and job.primary_trace is not None else None
        reason: str | None = "draining"
        try:
            reason = await self._compare(job, trace)
        except asyncio.CancelledError:
            job.drop("draining")
            raise
        except Exception:
            log.exception("shadow %s -> %s failed", job.primary, job.candidate)
            reason = "error"
        finally:
            if trace is not None:
                trace.span.set_attribute("xnli.shadow.outcome", reason or "compared")
                trace.span.end()
        if reason is not None:
            job.drop(reason)

    def _trace(self, job: ShadowJob) -> trace_spans.RequestTrace | None:
        """Tracing (issue #27): a shadow is a trace of its own (it never delays the primary's), linked to the
        primary's request span; its batches are its children."""
        from opentelemetry.context import Context
        from opentelemetry.trace import Link

        assert job.primary_trace is not None
        attributes: dict[str, int | str] = {
            "xnli.primary": job.primary,
            "xnli.candidate": job.candidate,
            "xnli.pairs": len(job.pairs),
        }
        span = trace_spans.start_span("shadow", attributes, Context(), links=[Link(job.primary_trace)])
        if span is None:
            return None
        runtime = self._gate.variants.get(job.candidate)
        device = runtime.worker.device if runtime is not None and runtime.worker is not None else ""
        batch = {"xnli.variant": job.candidate, "xnli.device": device}
        if runtime is not None:
            batch.update({"xnli.backend": runtime.spec.backend, "xnli.graph": runtime.spec.graph})
        return trace_spans.RequestTrace(span, batch)

    async def _compare(self, job: ShadowJob, trace: trace_spans.RequestTrace | None = None) -> str | None:
        """None once compared and counted, else the reason the pairs were dropped."""
        candidate, pairs, truncate = job.candidate, job.pairs, job.truncate
        if self._gate.draining:
            return "draining"
        runtime = self._gate.variants.get(candidate)
        if runtime is None or runtime.status is not VariantStatus.READY:
            return "not_ready"
        encoder = runtime.encoder
        assert encoder is not None
        try:
            admission = runtime.admit_shadow(len(pairs), self.max_queue_pairs, self.max_client_backlog_s)
        except ShadowRefused as refused:
            return refused.reason
        loop = asyncio.get_running_loop()
        deadline = time.perf_counter() + self.timeout_s
        try:
            with admission:
                if job.encoded is not None and job.encoded[1] == encoder.fingerprint:
                    ids = job.encoded[0]  # the candidate tokenizes as the primary did: nothing to tokenize
                else:
                    tokenization = self._tokenization
                    if not tokenization.inline(pairs) and tokenization.waiting_pairs:
                        return "busy"  # client requests are waiting for the tokenizer threads: they go first
                    ids = (await tokenization.encode(encoder, pairs, truncate)).ids
                request = InferenceRequest(len(pairs), loop, deadline, job.language)
                request.trace = trace
                admission.submit(request, ids)
        except ShadowRefused as refused:
            return refused.reason
        except InputTooLongError:
            return "too_long"
        except OverloadedError:
            return "busy"
        try:
            async with asyncio.timeout_at(loop.time() + self.timeout_s):
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
        job.record(probabilities_of(request.outputs))
        return None

    async def wait(self) -> None:
        """Return once every shadow started so far was compared or dropped (tests and benchmarks use it)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
