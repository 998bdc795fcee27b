"""Queues and device workers: the dynamic batcher.

One worker thread per device runs every forward pass for the variants placed on that device, so the event loop
never blocks on a model and variants sharing a GPU do not fight over it. When the device is free the worker takes
what is waiting (no timer unless a variant asks for ``max_wait_ms``), serving variants round-robin so none starves.

Admission is bounded: a queue holds at most ``max_queue_pairs`` pairs, and a request whose pairs could not be
computed before its deadline (judged from the device's measured seconds per pair and the work already queued on it)
is refused at once instead of queued. Pairs whose request expired or went away are dropped before compute.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch

from app import metrics
from app.engine.batching import BatchLimits, select_batch
from app.engine.errors import (
    DeadlineExceededError,
    DeadlineTooShortError,
    InferenceError,
    OverloadedError,
    RequestTooLargeError,
    VariantNotReadyError,
)
from app.engine.labels import LABELS
from app.engine.runner import padded_length

if TYPE_CHECKING:
    from app.engine.runner import BatchRunner

log = logging.getLogger(__name__)

# Weight of the newest batch in the seconds-per-pair estimate that admission control uses: it rises fast and falls
# slowly, because under-estimating admits work that then expires after being computed (bigger batches cost more per
# pair on a CPU), while over-estimating only answers a few more 429s.
_RATE_RISE = 0.5
_RATE_FALL = 0.1
# Admit only work expected to finish within this share of the time a request has left: the estimate is an average
# and batches vary, so admitting right up to the deadline makes the last requests in line expire after their pairs
# were computed (measured: base CPU, 16 clients x 16 pairs, most requests expired at 27 s of a 30 s deadline).
ADMISSION_HEADROOM = 0.8


class UnloadedRunner:
    """Stands in for the runner of a queue taken off its worker, so that the queue no longer holds the model."""

    def __init__(self, name: str) -> None:
        self.name = name

    def forward(self, sequences: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        raise InferenceError(f"variant {self.name!r} was unloaded")


class WorkerKilled(BaseException):
    """A fault that must take the device worker down (a device that became unusable), not just fail a batch."""


class InferenceRequest:
    """One caller's pairs; answered when its last pair has been computed, whichever batches carried them."""

    __slots__ = (
        "_loop",
        "abandon_reason",
        "compute_s",
        "deadline",
        "done_at",
        "enqueued_at",
        "future",
        "last_batch",
        "probabilities",
        "remaining",
    )

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop, deadline: float = math.inf) -> None:
        self._loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.probabilities: npt.NDArray[np.float32] = np.empty((size, len(LABELS)), dtype=np.float32)
        self.remaining = size
        self.deadline = deadline
        self.enqueued_at = 0.0
        self.done_at = 0.0
        self.compute_s = 0.0
        self.last_batch = -1
        self.abandon_reason: str | None = None

    @property
    def abandoned(self) -> bool:
        return self.abandon_reason is not None

    def abandon(self, reason: str) -> None:
        """Nobody waits for the answer any more (deadline, disconnect, failure): its queued pairs are skipped."""
        if self.abandon_reason is None:
            self.abandon_reason = reason

    def complete(self, now: float) -> None:
        self.done_at = now
        self._loop.call_soon_threadsafe(_resolve, self.future)

    def fail(self, error: BaseException, reason: str = "failed") -> None:
        self.abandon(reason)
        self._loop.call_soon_threadsafe(_reject, self.future, error)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _reject(future: asyncio.Future[None], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class PendingPair:
    __slots__ = ("ids", "index", "length", "request")

    def __init__(self, request: InferenceRequest, index: int, ids: list[int]) -> None:
        self.request = request
        self.index = index
        self.ids = ids
        self.length = len(ids)


class Reservation:
    """Room held in a queue for a request that was admitted but is still being tokenized.

    Admission counts it like queued pairs, so a burst of large requests cannot all pass admission while none of
    them is queued yet. Released when the pairs are queued, or when the request fails or goes away first.
    """

    __slots__ = ("count", "queue", "released")

    def __init__(self, queue: VariantQueue, count: int) -> None:
        self.queue = queue
        self.count = count
        self.released = False


class VariantQueue:
    """Pairs waiting for one variant. The device worker's lock guards ``pairs`` and ``reserved_pairs``; the worker
    thread alone updates the cost model and metrics (``record_batch``) outside it."""

    def __init__(
        self,
        name: str,
        runner: BatchRunner,
        limits: BatchLimits,
        max_wait_ms: float = 0.0,
        max_queue_pairs: int = 1_000_000,
        seconds_per_pair: float = 0.0,
    ) -> None:
        self.name = name
        self.runner = runner
        self.limits = limits
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue_pairs = max_queue_pairs
        self.seconds_per_pair = seconds_per_pair  # smoothed device time per pair, for admission and Retry-After
        self.pairs: deque[PendingPair] = deque()
        self.reserved_pairs = 0  # admitted, still being tokenized
        self.batches_run = 0
        self.retired = False  # removed from its worker (variant unloaded or replaced): admits nothing more
        self._depth = metrics.QUEUE_DEPTH.labels(name)
        self._inference = metrics.INFERENCE_DURATION.labels(name)
        self._batch_size = metrics.BATCH_SIZE.labels(name)
        self._batch_tokens = metrics.BATCH_TOKENS.labels(name)
        self._padding = metrics.BATCH_PADDING_RATIO.labels(name)
        self._real_tokens = metrics.COMPUTED_TOKENS.labels(name, "real")
        self._padding_tokens = metrics.COMPUTED_TOKENS.labels(name, "padding")
        self._predictions = [metrics.PREDICTIONS.labels(name, label) for label in LABELS]

    def seconds_until_ready(self, now: float) -> float | None:
        """0 when a batch should run now, a wait in seconds while ``max_wait_ms`` lets it fill, None when empty."""
        if not self.pairs:
            return None
        if self.max_wait_s <= 0 or len(self.pairs) >= self.limits.max_batch_size:
            return 0.0
        return max(0.0, self.pairs[0].request.enqueued_at + self.max_wait_s - now)

    def backlog_seconds(self) -> float:
        return (len(self.pairs) + self.reserved_pairs) * self.seconds_per_pair

    def put(self, pairs: Sequence[PendingPair]) -> None:
        self.pairs.extend(pairs)
        self._depth.inc(len(pairs))

    def clear(self) -> list[InferenceRequest]:
        """Empty the queue; returns the distinct requests that still had pairs waiting."""
        requests = list({id(pair.request): pair.request for pair in self.pairs}.values())
        self._depth.dec(len(self.pairs))
        self.pairs.clear()
        return requests

    def take_batch(self, now: float) -> list[PendingPair]:
        """Next batch by the length-grouping policy; pairs of expired or abandoned requests are dropped here."""
        window: list[PendingPair] = []
        dropped: dict[str, int] = {}
        while self.pairs and len(window) < self.limits.window:
            pair = self.pairs.popleft()
            request = pair.request
            if request.abandon_reason is None and request.deadline <= now + request.remaining * self.seconds_per_pair:
                # Past its deadline, or cannot make it even if all its pairs ran now: computing more of it is waste.
                request.fail(
                    DeadlineExceededError(
                        f"deadline cannot be met: {request.remaining} pairs left after "
                        f"{now - request.enqueued_at:.3f}s in the queue, {max(0.0, request.deadline - now):.3f}s to go"
                    ),
                    reason="deadline",
                )
            if request.abandon_reason is not None:
                dropped[request.abandon_reason] = dropped.get(request.abandon_reason, 0) + 1
            else:
                window.append(pair)
        chosen = select_batch([pair.length for pair in window], self.limits, [pair.request for pair in window])
        chosen_positions = set(chosen)
        self.pairs.extendleft(
            reversed([pair for position, pair in enumerate(window) if position not in chosen_positions])
        )
        self._depth.dec(len(chosen) + sum(dropped.values()))
        for reason, count in dropped.items():
            metrics.DROPPED_PAIRS.labels(self.name, reason).inc(count)
        return [window[position] for position in chosen]

    def record_batch(
        self, pairs: Sequence[PendingPair], elapsed: float, probabilities: npt.NDArray[np.float32]
    ) -> None:
        sample = elapsed / len(pairs)
        weight = _RATE_RISE if sample > self.seconds_per_pair else _RATE_FALL
        self.seconds_per_pair = (
            sample if self.seconds_per_pair <= 0 else (1 - weight) * self.seconds_per_pair + weight * sample
        )
        real_tokens = sum(pair.length for pair in pairs)
        padded_tokens = len(pairs) * padded_length(max(pair.length for pair in pairs))
        self._inference.observe(elapsed)
        self._batch_size.observe(len(pairs))
        self._batch_tokens.observe(padded_tokens)
        self._padding.observe(1.0 - real_tokens / padded_tokens)
        self._real_tokens.inc(real_tokens)
        self._padding_tokens.inc(padded_tokens - real_tokens)
        for label_index, count in enumerate(np.bincount(probabilities.argmax(axis=1), minlength=len(LABELS))):
            if count:
                self._predictions[label_index].inc(int(count))


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


class DeviceWorker:
    """The single thread that owns one device and runs batches for every variant placed on it."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.queues: list[VariantQueue] = []
        self.failure: BaseException | None = None
        self._condition = threading.Condition()
        self._stopping = False
        self._next_queue = 0
        self._batch_counter = 0
        self._busy_until = 0.0  # when the batch now running should end: queued work starts after it
        self._thread = threading.Thread(target=self._run, name=f"device-worker-{device}", daemon=True)

    def add_queue(self, queue: VariantQueue) -> None:
        with self._condition:
            self.queues.append(queue)

    def remove_queue(self, queue: VariantQueue, reason: str = "unloaded") -> int:
        """Stop serving ``queue`` (its variant was unloaded or replaced); returns how many requests still had pairs in
        it, which fail (after a drain these are only abandoned ones). A batch already running finishes."""
        with self._condition:
            queue.retired = True
            if queue in self.queues:
                self.queues.remove(queue)
            leftover = queue.clear()
            # The worker thread may still hold this queue in a local variable until its next batch: drop the model
            # here, not when the queue object goes.
            queue.runner = UnloadedRunner(queue.name)
        for request in leftover:
            request.fail(InferenceError(f"variant {queue.name!r} was {reason} before this request's pairs ran"))
        return len(leftover)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.failure is None

    def _check_admission(self, queue: VariantQueue, count: int, deadline: float, now: float) -> None:
        """Raise unless ``count`` more pairs fit the queue and can be computed before ``deadline``.

        RequestTooLargeError and DeadlineTooShortError say the request could never be admitted, however idle the
        device (the client must change it); OverloadedError says it cannot be admitted now. Caller holds the lock."""
        if self.failure is not None:
            raise InferenceError(f"device worker {self.device} is down: {self.failure!r}")
        if queue.retired:
            raise VariantNotReadyError(queue.name, "unloaded")
        if count > queue.max_queue_pairs:
            raise RequestTooLargeError(
                f"{count} pairs in one request; variant {queue.name!r} queues at most "
                f"max_queue_pairs={queue.max_queue_pairs}: split the request",
                limit=queue.max_queue_pairs,
            )
        minimum_s = count * queue.seconds_per_pair / ADMISSION_HEADROOM
        if deadline - now < minimum_s:
            raise DeadlineTooShortError(
                f"a deadline of {max(0.0, deadline - now) * 1000:.3f} ms is too short for {count} pair(s) of "
                f"variant {queue.name!r} even on an idle device; the minimum is about {minimum_s * 1000:.1f} ms",
                minimum_s=minimum_s,
            )
        backlog = sum(other.backlog_seconds() for other in self.queues) + max(0.0, self._busy_until - now)
        waiting = len(queue.pairs) + queue.reserved_pairs
        if waiting + count > queue.max_queue_pairs:
            raise OverloadedError(
                f"variant {queue.name!r} queue is full ({waiting} of {queue.max_queue_pairs} pairs "
                f"waiting or being tokenized, this request adds {count})",
                retry_after_s=max(backlog, 1.0),
            )
        expected = backlog + count * queue.seconds_per_pair
        if expected > ADMISSION_HEADROOM * (deadline - now):
            raise OverloadedError(
                f"variant {queue.name!r} cannot answer within the deadline: about {expected:.2f}s of work is "
                f"queued on {self.device}, {max(0.0, deadline - now):.2f}s are left (admitted up to "
                f"{ADMISSION_HEADROOM:.0%} of them)",
                retry_after_s=max(backlog, 1.0),
            )

    def admit(self, queue: VariantQueue, count: int, deadline: float) -> Reservation:
        """Early refusal, before tokenizing (refused requests then cost almost no CPU); admitted pairs hold their
        room until ``submit`` or ``release``."""
        with self._condition:
            self._check_admission(queue, count, deadline, time.perf_counter())
            queue.reserved_pairs += count
            return Reservation(queue, count)

    def release(self, reservation: Reservation) -> None:
        """Give back an admitted request's room (it failed or went away before its pairs were queued)."""
        if reservation.released:  # only ever set to True, under the lock: the common path takes no lock
            return
        with self._condition:
            self._release(reservation)

    @staticmethod
    def _release(reservation: Reservation) -> None:
        if not reservation.released:
            reservation.released = True
            reservation.queue.reserved_pairs -= reservation.count

    def submit(
        self,
        queue: VariantQueue,
        request: InferenceRequest,
        sequences: Sequence[list[int]],
        reservation: Reservation | None = None,
    ) -> None:
        """Queue a request's pairs (turning its reservation into queued pairs), or raise if they cannot be served in
        time: tokenizing took some of the time the request had."""
        pending = [PendingPair(request, index, ids) for index, ids in enumerate(sequences)]
        with self._condition:
            if reservation is not None:
                self._release(reservation)
            now = time.perf_counter()
            self._check_admission(queue, len(pending), request.deadline, now)
            request.enqueued_at = now
            queue.put(pending)
            self._condition.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then end the thread."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _next_batch(self) -> tuple[VariantQueue, list[PendingPair]] | None:
        """Wait for a ready queue; round-robin from the one after the last served. None once stopped and empty."""
        with self._condition:
            while True:
                now = time.perf_counter()
                soonest: float | None = None
                count = len(self.queues)
                for offset in range(count):
                    position = (self._next_queue + offset) % count
                    queue = self.queues[position]
                    wait = queue.seconds_until_ready(now)
                    if wait is None:
                        continue
                    if wait <= 0 or self._stopping:
                        batch = queue.take_batch(now)
                        if not batch:
                            continue
                        self._next_queue = (position + 1) % count
                        return queue, batch
                    soonest = wait if soonest is None else min(soonest, wait)
                if self._stopping and soonest is None:
                    return None
                self._condition.wait(soonest)

    def _run(self) -> None:
        try:
            while (work := self._next_batch()) is not None:
                self._run_batch(*work)
        except BaseException as error:  # the worker must never die silently: health checks read this
            self.failure = error
            log.critical("device worker %s died: %r", self.device, error)
            self._fail_everything(error)

    def _forward(self, queue: VariantQueue, sequences: list[list[int]]) -> npt.NDArray[np.float32]:
        """Run a batch; on out-of-memory split it in halves and retry before giving up."""
        try:
            return queue.runner.forward(sequences)
        except Exception as error:
            if not _is_out_of_memory(error) or len(sequences) == 1:
                raise
        metrics.BATCH_SPLITS.labels(queue.name).inc()
        log.warning(
            "out of memory on %s with %d pairs of %s; splitting the batch", self.device, len(sequences), queue.name
        )
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        middle = len(sequences) // 2
        return np.concatenate([self._forward(queue, sequences[:middle]), self._forward(queue, sequences[middle:])])

    def _run_batch(self, queue: VariantQueue, batch: list[PendingPair]) -> None:
        self._batch_counter += 1
        batch_id = self._batch_counter
        requests = list({id(pair.request): pair.request for pair in batch}.values())
        started = time.perf_counter()
        self._busy_until = started + len(batch) * queue.seconds_per_pair
        try:
            probabilities = self._forward(queue, [pair.ids for pair in batch])
            if probabilities.shape != (len(batch), len(LABELS)):
                raise ValueError(f"the runner returned shape {probabilities.shape} for {len(batch)} pairs")
        except Exception as error:
            self._fail_batch(queue, batch, requests, error)
            return
        except BaseException as error:
            for request in requests:
                request.fail(InferenceError(f"device worker {self.device} stopped: {error!r}"))
            raise
        finished = time.perf_counter()
        elapsed = finished - started
        queue.batches_run += 1
        try:
            for pair, row in zip(batch, probabilities, strict=True):
                request = pair.request
                request.probabilities[pair.index] = row
                if request.last_batch != batch_id:
                    request.last_batch = batch_id
                    request.compute_s += elapsed
                request.remaining -= 1
                if request.remaining == 0:
                    request.complete(finished)
        except Exception as error:  # answering must not take the worker down: fail what is still unanswered
            self._fail_batch(queue, batch, [request for request in requests if request.remaining > 0], error)
            return
        try:
            queue.record_batch(batch, elapsed, probabilities)
        except Exception:  # every request is answered; only bookkeeping was lost
            log.exception("recording batch metrics failed for variant %s; the worker goes on", queue.name)

    def _fail_batch(
        self, queue: VariantQueue, batch: list[PendingPair], requests: list[InferenceRequest], error: Exception
    ) -> None:
        """The batch's requests fail with a 500; the worker and every other batch go on."""
        log.error(
            "inference failed for variant %s (batch of %d pairs): %s: %s",
            queue.name,
            len(batch),
            type(error).__name__,
            error,
            exc_info=error,
        )
        failure = InferenceError(f"inference failed for variant {queue.name!r}: {type(error).__name__}: {error}")
        for request in requests:
            request.fail(failure)

    def _fail_everything(self, error: BaseException) -> None:
        with self._condition:
            for queue in self.queues:
                for request in queue.clear():
                    request.fail(InferenceError(f"device worker {self.device} stopped: {error!r}"))
