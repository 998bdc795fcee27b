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

import numpy as np
import numpy.typing as npt

from app import metrics
from app.engine.errors import DeadlineExceededError, EngineError, InputTooLongError, OverloadedError
from app.engine.models.catalogue import ShadowSpec
from app.engine.scheduler.requests import InferenceRequest, Priority, ShadowRefused
from app.engine.status import PredictionResult, VariantRuntime, VariantStatus
from app.engine.tasks.nli import LABELS
from app.engine.tokenization import EncodedPairs, TokenizationPool
from app.engine.traffic.split import TrafficRouter

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
    """The shadow part of the Engine (it inherits this): its own state is set here, the rest by the Engine."""

    variants: dict[str, VariantRuntime]
    draining: bool
    router: TrafficRouter
    tokenization: TokenizationPool

    def __init__(
        self, shadows: Sequence[ShadowSpec], max_queue_pairs: int, timeout_s: float, max_client_backlog_s: float
    ) -> None:
        self.shadow_max_queue_pairs = max_queue_pairs
        self.shadow_timeout_s = timeout_s
        self.shadow_max_client_backlog_s = max_client_backlog_s
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        for shadow in shadows:  # every series exists from the start: rates and ratios read 0
            metrics.SHADOW_SAMPLED_PAIRS.labels(shadow.primary, shadow.candidate)
            for reason in metrics.SHADOW_DROP_REASONS:
                metrics.SHADOW_DROPPED_PAIRS.labels(shadow.primary, shadow.candidate, reason)

    def _start_shadows(
        self,
        primary: str,
        pairs: Sequence[tuple[str, str]],
        result: PredictionResult,
        truncate: bool,
        language: str,
        encoded: tuple[EncodedPairs, str] | None = None,
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
                    None if encoded is None else ([encoded[0].ids[index] for index in chosen], encoded[1]),
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
            if job.encoded is not None and job.encoded[1] == encoder.fingerprint:
                ids = job.encoded[0]  # the candidate tokenizes as the primary did: nothing to tokenize
            else:
                if not self.tokenization.inline(pairs) and self.tokenization.waiting_pairs:
                    return "busy"  # client requests are waiting for the tokenizer threads: they go first
                ids = (await self.tokenization.encode(encoder, pairs, truncate)).ids
            request = InferenceRequest(len(pairs), loop, deadline, job.language)
            worker.submit(
                queue,
                request,
                ids,
                reservation,
                Priority.SHADOW,
                max_shadow_pairs=limits[0],
                max_client_backlog_s=limits[1],
            )
        except ShadowRefused as refused:
            return refused.reason
        except InputTooLongError:
            return "too_long"
        except OverloadedError:
            return "busy"
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
