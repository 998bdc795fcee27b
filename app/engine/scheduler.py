"""Queues and device workers: the dynamic batcher.

One worker thread per device runs every forward pass for the variants placed on that device, so the event loop
never blocks on a model and variants sharing a GPU do not fight over it. When the device is free the worker takes
what is waiting (no timer unless a variant asks for ``max_wait_ms``), serving variants round-robin so none starves.

Each queue has three lanes, one per priority: interactive pairs run before batch pairs, batch pairs before shadow
pairs. The worker always starts the highest-priority batch that is ready, so lower-priority work only fills spare
device time and delays interactive requests by at most the one batch already running; batches of background lanes
(batch, shadow) are kept short (``max_background_batch_s``), and where the runner allows it (torch) they pause between
encoder layers to let ready interactive batches run first, so an interactive request waits for one layer at most.

Admission is bounded: each lane holds at most ``max_queue_pairs`` pairs, and a request whose pairs could not be
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
from dataclasses import replace
from enum import IntEnum
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
    from prometheus_client import Counter, Gauge

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


class Priority(IntEnum):
    """Lanes of a queue, served in this order; lower values run first."""

    INTERACTIVE = 0
    BATCH = 1
    SHADOW = 2

    @property
    def label(self) -> str:
        return self.name.lower()


class ShadowRefused(Exception):
    """Shadow work not taken: ``reason`` is the `reason` label of xnli_shadow_dropped_pairs_total."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


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
        "language",
        "last_batch",
        "probabilities",
        "remaining",
    )

    def __init__(
        self, size: int, loop: asyncio.AbstractEventLoop, deadline: float = math.inf, language: str = "unspecified"
    ) -> None:
        self._loop = loop
        self.language = language  # the `language` label its predictions are counted under
        self.future: asyncio.Future[None] = loop.create_future()
        self.probabilities: npt.NDArray[np.float32] = np.empty((size, len(LABELS)), dtype=np.float32)
        self.remaining = size
        self.deadline = deadline
        self.enqueued_at = 0.0
        self.done_at = 0.0
        self.compute_s = 0.0
        self.last_batch = -1
        self.abandon_reason: str | None = None

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
    """Room held in a queue's lane for a request that was admitted but is still being tokenized.

    Admission counts it like queued pairs, so a burst of large requests cannot all pass admission while none of
    them is queued yet. Released when the pairs are queued, or when the request fails or goes away first.
    """

    __slots__ = ("count", "lane", "queue", "released")

    def __init__(self, queue: VariantQueue, count: int, priority: Priority = Priority.INTERACTIVE) -> None:
        self.queue = queue
        self.lane = queue.lanes[priority]
        self.count = count
        self.released = False


class Lane:
    """The pairs of one priority waiting for one variant."""

    __slots__ = ("depth", "pairs", "priority", "reserved_pairs")

    def __init__(self, priority: Priority, depth: Gauge) -> None:
        self.priority = priority
        self.pairs: deque[PendingPair] = deque()
        self.reserved_pairs = 0  # admitted, still being tokenized
        self.depth = depth

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def waiting(self) -> int:
        return len(self.pairs) + self.reserved_pairs


class VariantQueue:
    """Pairs waiting for one variant, in one lane per priority. The device worker's lock guards the lanes; the worker
    thread alone updates the cost model and metrics (``record_batch``) outside it.

    Client lanes (interactive, batch) feed the variant's xnli_* series; the shadow lane feeds only xnli_shadow_*
    series, so a candidate's own latency and prediction counts never mix in shadow work."""

    def __init__(
        self,
        name: str,
        runner: BatchRunner,
        limits: BatchLimits,
        max_wait_ms: float = 0.0,
        max_queue_pairs: int = 1_000_000,
        seconds_per_pair: float = 0.0,
        max_background_batch_s: float = math.inf,
        min_forward_s: float = 0.0,
    ) -> None:
        self.name = name
        self.runner = runner
        self.limits = limits
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue_pairs = max_queue_pairs
        self.seconds_per_pair = seconds_per_pair  # smoothed device time per pair, for admission and Retry-After
        self.max_background_batch_s = max_background_batch_s  # batch and shadow lanes: the longest batch they start
        # The fastest forward pass measured (one short row, at warm-up): no request is answered sooner, however idle
        # the device. Unlike seconds_per_pair it does not move with load, so "too short a deadline" does not either.
        self.min_forward_s = min_forward_s
        self.lanes = (
            Lane(Priority.INTERACTIVE, metrics.QUEUE_DEPTH.labels(name)),
            Lane(Priority.BATCH, metrics.QUEUE_DEPTH.labels(name)),
            Lane(Priority.SHADOW, metrics.SHADOW_QUEUE_DEPTH.labels(name)),
        )
        self.batches_run = 0
        self.retired = False  # removed from its worker (variant unloaded or replaced): admits nothing more
        self._inference = metrics.INFERENCE_DURATION.labels(name)
        self._batch_size = metrics.BATCH_SIZE.labels(name)
        self._batch_tokens = metrics.BATCH_TOKENS.labels(name)
        self._padding = metrics.BATCH_PADDING_RATIO.labels(name)
        self._real_tokens = metrics.COMPUTED_TOKENS.labels(name, "real")
        self._padding_tokens = metrics.COMPUTED_TOKENS.labels(name, "padding")
        self._predictions: dict[tuple[str, int], Counter] = {}
        self._shadow_inference = metrics.SHADOW_INFERENCE_DURATION.labels(name)
        self._shadow_batch_size = metrics.SHADOW_BATCH_SIZE.labels(name)

    @property
    def pairs(self) -> deque[PendingPair]:
        """The interactive lane's pairs."""
        return self.lanes[Priority.INTERACTIVE].pairs

    @property
    def reserved_pairs(self) -> int:
        """Interactive pairs admitted and still being tokenized."""
        return self.lanes[Priority.INTERACTIVE].reserved_pairs

    @reserved_pairs.setter
    def reserved_pairs(self, value: int) -> None:
        self.lanes[Priority.INTERACTIVE].reserved_pairs = value

    def seconds_until_ready(self, now: float, priority: Priority = Priority.INTERACTIVE) -> float | None:
        """0 when a batch of the lane should run now, a wait in seconds while ``max_wait_ms`` lets it fill, None when
        the lane is empty."""
        pairs = self.lanes[priority].pairs
        if not pairs:
            return None
        if self.max_wait_s <= 0 or len(pairs) >= self.limits.max_batch_size:
            return 0.0
        return max(0.0, pairs[0].request.enqueued_at + self.max_wait_s - now)

    def backlog_seconds(self, up_to: Priority = Priority.SHADOW) -> float:
        """Device time of the pairs waiting in lanes that run before or with ``up_to``."""
        return sum(lane.waiting for lane in self.lanes[: up_to + 1]) * self.seconds_per_pair

    def put(self, pairs: Sequence[PendingPair], priority: Priority = Priority.INTERACTIVE) -> None:
        lane = self.lanes[priority]
        lane.pairs.extend(pairs)
        lane.depth.inc(len(pairs))

    def clear(self, priorities: Sequence[Priority] = tuple(Priority)) -> list[InferenceRequest]:
        """Empty lanes (all by default); returns the distinct requests that still had pairs waiting."""
        requests: dict[int, InferenceRequest] = {}
        for priority in priorities:
            lane = self.lanes[priority]
            requests.update((id(pair.request), pair.request) for pair in lane.pairs)
            lane.depth.dec(len(lane.pairs))
            lane.pairs.clear()
        return list(requests.values())

    def _limits_for(self, priority: Priority) -> BatchLimits:
        """Background batches are cut to ``max_background_batch_s`` of estimated device time: an interactive request
        arriving while one runs waits for at most that."""
        if priority is Priority.INTERACTIVE or self.seconds_per_pair <= 0 or math.isinf(self.max_background_batch_s):
            return self.limits
        pairs = max(1, min(self.limits.max_batch_size, int(self.max_background_batch_s / self.seconds_per_pair)))
        return replace(self.limits, max_batch_size=pairs)

    def take_batch(self, now: float, priority: Priority = Priority.INTERACTIVE) -> list[PendingPair]:
        """Next batch of a lane by the length-grouping policy; pairs of expired or abandoned requests are dropped
        here (counted in xnli_dropped_pairs_total for client lanes; a shadow's own task counts its drops)."""
        lane = self.lanes[priority]
        limits = self._limits_for(priority)
        window: list[PendingPair] = []
        dropped: dict[str, int] = {}
        while lane.pairs and len(window) < limits.window:
            pair = lane.pairs.popleft()
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
        chosen = select_batch([pair.length for pair in window], limits, [pair.request for pair in window])
        chosen_positions = set(chosen)
        lane.pairs.extendleft(
            reversed([pair for position, pair in enumerate(window) if position not in chosen_positions])
        )
        lane.depth.dec(len(chosen) + sum(dropped.values()))
        if priority is not Priority.SHADOW:
            for reason, count in dropped.items():
                metrics.DROPPED_PAIRS.labels(self.name, reason).inc(count)
        return [window[position] for position in chosen]

    def record_batch(
        self,
        pairs: Sequence[PendingPair],
        elapsed: float,
        probabilities: npt.NDArray[np.float32],
        priority: Priority = Priority.INTERACTIVE,
    ) -> None:
        sample = elapsed / len(pairs)
        weight = _RATE_RISE if sample > self.seconds_per_pair else _RATE_FALL
        self.seconds_per_pair = (
            sample if self.seconds_per_pair <= 0 else (1 - weight) * self.seconds_per_pair + weight * sample
        )
        if priority is Priority.SHADOW:
            self._shadow_inference.observe(elapsed)
            self._shadow_batch_size.observe(len(pairs))
            return
        real_tokens = sum(pair.length for pair in pairs)
        padded_tokens = len(pairs) * padded_length(max(pair.length for pair in pairs))
        self._inference.observe(elapsed)
        self._batch_size.observe(len(pairs))
        self._batch_tokens.observe(padded_tokens)
        self._padding.observe(1.0 - real_tokens / padded_tokens)
        self._real_tokens.inc(real_tokens)
        self._padding_tokens.inc(padded_tokens - real_tokens)
        counts: dict[tuple[str, int], int] = {}
        for pair, label_index in zip(pairs, probabilities.argmax(axis=1).tolist(), strict=True):
            key = (pair.request.language, label_index)
            counts[key] = counts.get(key, 0) + 1
        for key, count in counts.items():
            counter = self._predictions.get(key)
            if counter is None:
                counter = self._predictions[key] = metrics.PREDICTIONS.labels(self.name, LABELS[key[1]], key[0])
            counter.inc(count)


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
        self._shadows_closed = False  # set by drop_shadows when the service drains
        self._next_queue = [0] * len(Priority)  # per lane: round-robin position
        self._batch_counter = 0
        self._busy_until = 0.0  # when the batch now running should end: queued work starts after it
        self._preempting = False  # interactive batches are running inside a background batch's yield point
        self._yielding = False  # the batch now running is a background one that yields to interactive batches
        self._preempted_s = 0.0  # time those took, not charged to the background batch
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
            leftover = queue.clear((Priority.INTERACTIVE, Priority.BATCH))
            shadows = queue.clear((Priority.SHADOW,))
            # The worker thread may still hold this queue in a local variable until its next batch: drop the model
            # here, not when the queue object goes.
            queue.runner = UnloadedRunner(queue.name)
        for request in leftover:
            request.fail(InferenceError(f"variant {queue.name!r} was {reason} before this request's pairs ran"))
        for request in shadows:  # counted as dropped (not_ready), not as a failed forward pass
            request.fail(ShadowRefused("not_ready", f"variant {queue.name!r} was {reason}"), reason="not_ready")
        return len(leftover)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.failure is None

    def _check_admission(
        self,
        queue: VariantQueue,
        count: int,
        deadline: float,
        now: float,
        priority: Priority = Priority.INTERACTIVE,
        first_admission: bool = True,
    ) -> None:
        """Raise unless ``count`` more pairs fit the queue's lane and can be computed before ``deadline``.

        Only work that runs before or with ``priority`` counts: queued batch work never gets an interactive request
        refused. RequestTooLargeError and DeadlineTooShortError say the request could never be admitted, however idle
        the device (the client must change it: only at first admission, not when tokenizing has used part of the time);
        OverloadedError says it cannot be admitted now. Caller holds the lock."""
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
        if first_admission and deadline - now < queue.min_forward_s:
            raise DeadlineTooShortError(
                f"a deadline of {max(0.0, deadline - now) * 1000:.3f} ms is too short for variant {queue.name!r} even "
                f"on an idle device: its fastest forward pass takes {queue.min_forward_s * 1000:.1f} ms",
                minimum_s=queue.min_forward_s,
            )
        running = 0.0 if priority is Priority.INTERACTIVE and self._yielding else max(0.0, self._busy_until - now)
        backlog = sum(other.backlog_seconds(priority) for other in self.queues) + running
        waiting = queue.lanes[priority].waiting
        if waiting + count > queue.max_queue_pairs:
            raise OverloadedError(
                f"variant {queue.name!r} {priority.label} queue is full ({waiting} of {queue.max_queue_pairs} "
                f"pairs waiting or being tokenized, this request adds {count})",
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

    def admit(
        self, queue: VariantQueue, count: int, deadline: float, priority: Priority = Priority.INTERACTIVE
    ) -> Reservation:
        """Early refusal, before tokenizing (refused requests then cost almost no CPU); admitted pairs hold their
        room until ``submit`` or ``release``. Shadow work goes through ``admit_shadow``."""
        with self._condition:
            self._check_admission(queue, count, deadline, time.perf_counter(), priority)
            reservation = Reservation(queue, count, priority)
            reservation.lane.reserved_pairs += count
            return reservation

    def _check_shadow(self, queue: VariantQueue, count: int, max_pairs: int, max_client_backlog_s: float) -> None:
        """Raise ShadowRefused unless the shadow lane has room and the device is not busy with client work.
        Caller holds the lock."""
        if self.failure is not None or self._stopping:
            raise ShadowRefused("unavailable", f"device worker {self.device} is stopping or down")
        if self._shadows_closed:
            raise ShadowRefused("draining", "the service is draining: shadow work is not taken")
        if queue.retired:  # unloaded or replaced while the shadow was tokenized: no worker serves this queue
            raise ShadowRefused("not_ready", f"variant {queue.name!r} was unloaded or replaced")
        lane = queue.lanes[Priority.SHADOW]
        if lane.waiting + count > max_pairs:
            abandoned = [pair for pair in lane.pairs if pair.request.abandon_reason is not None]
            if abandoned:  # pairs whose shadow gave up waiting hold no room
                lane.pairs = deque(pair for pair in lane.pairs if pair.request.abandon_reason is None)
                lane.depth.dec(len(abandoned))
        if lane.waiting + count > max_pairs:
            raise ShadowRefused(
                "queue_full", f"shadow lane of {queue.name!r} holds {lane.waiting} pairs, at most {max_pairs}"
            )
        client = sum(other.backlog_seconds(Priority.BATCH) for other in self.queues)
        if client > max_client_backlog_s:
            raise ShadowRefused(
                "busy", f"{client:.3f}s of client work is queued on {self.device}, over {max_client_backlog_s}s"
            )

    def admit_shadow(self, queue: VariantQueue, count: int, max_pairs: int, max_client_backlog_s: float) -> Reservation:
        """Room in ``queue``'s shadow lane, unless it is full or client work is queued on the device beyond
        ``max_client_backlog_s``: shadows are dropped first, before any client request waits or is refused."""
        with self._condition:
            self._check_shadow(queue, count, max_pairs, max_client_backlog_s)
            reservation = Reservation(queue, count, Priority.SHADOW)
            reservation.lane.reserved_pairs += count
            return reservation

    def drop_shadows(self, reason: str = "draining") -> int:
        """Fail every queued shadow (the service is draining); returns how many shadow requests were waiting."""
        with self._condition:
            self._shadows_closed = True  # and none is taken any more, even one still being tokenized
            leftover = [request for queue in self.queues for request in queue.clear([Priority.SHADOW])]
        for request in leftover:
            request.fail(ShadowRefused(reason, "shadow work dropped: the service is draining"), reason=reason)
        return len(leftover)

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
            reservation.lane.reserved_pairs -= reservation.count

    def submit(
        self,
        queue: VariantQueue,
        request: InferenceRequest,
        sequences: Sequence[list[int]],
        reservation: Reservation | None = None,
        priority: Priority = Priority.INTERACTIVE,
        *,
        max_shadow_pairs: int = 1_000_000,
        max_client_backlog_s: float = math.inf,
    ) -> None:
        """Queue a request's pairs in the lane of ``priority`` (turning its reservation into queued pairs), or raise
        if they cannot be served in time: tokenizing took some of the time the request had. Shadow pairs are checked
        again against ``max_shadow_pairs`` and ``max_client_backlog_s`` (ShadowRefused)."""
        pending = [PendingPair(request, index, ids) for index, ids in enumerate(sequences)]
        with self._condition:
            if reservation is not None:
                self._release(reservation)
            now = time.perf_counter()
            if priority is Priority.SHADOW:
                self._check_shadow(queue, len(pending), max_shadow_pairs, max_client_backlog_s)
            else:
                self._check_admission(queue, len(pending), request.deadline, now, priority, first_admission=False)
            request.enqueued_at = now
            queue.put(pending, priority)
            self._condition.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what clients queued (queued shadows are dropped), then end the thread."""
        self.drop_shadows()
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _next_batch(self) -> tuple[VariantQueue, list[PendingPair], Priority] | None:
        """Wait for a ready lane: the highest priority first, and within a priority round-robin from the queue after
        the last one served. None once stopped and empty."""
        with self._condition:
            while True:
                now = time.perf_counter()
                soonest: float | None = None
                count = len(self.queues)
                for priority in Priority:
                    for offset in range(count):
                        position = (self._next_queue[priority] + offset) % count
                        queue = self.queues[position]
                        wait = queue.seconds_until_ready(now, priority)
                        if wait is None:
                            continue
                        if wait <= 0 or self._stopping:
                            batch = queue.take_batch(now, priority)
                            if not batch:
                                continue
                            self._next_queue[priority] = (position + 1) % count
                            return queue, batch, priority
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

    def _preempt(self) -> None:
        """Yield point of a background batch (between two encoder layers): run the interactive batches that are ready
        now, then let the background batch go on. An interactive request thus waits for one layer of a background
        batch, not all of it. Calls made while it runs (the interactive forward passes trigger the same hooks) return
        at once."""
        if self._preempting:
            return
        self._preempting = True
        resumed_busy_until = self._busy_until
        started = time.perf_counter()
        try:
            while (work := self._ready_interactive()) is not None:
                self._run_batch(*work)
        finally:
            self._preempted_s += time.perf_counter() - started
            self._busy_until = resumed_busy_until + (time.perf_counter() - started)
            self._yielding = True
            self._preempting = False

    def _ready_interactive(self) -> tuple[VariantQueue, list[PendingPair], Priority] | None:
        with self._condition:
            now = time.perf_counter()
            count = len(self.queues)
            for offset in range(count):
                position = (self._next_queue[Priority.INTERACTIVE] + offset) % count
                queue = self.queues[position]
                if queue.seconds_until_ready(now) == 0.0:
                    batch = queue.take_batch(now)
                    if batch:
                        self._next_queue[Priority.INTERACTIVE] = (position + 1) % count
                        return queue, batch, Priority.INTERACTIVE
        return None

    def _forward(
        self, queue: VariantQueue, sequences: list[list[int]], preemptible: bool = False
    ) -> npt.NDArray[np.float32]:
        """Run a batch (background batches yield to interactive ones between layers where the runner can); on
        out-of-memory split it in halves and retry before giving up."""
        try:
            forward_preemptible = getattr(queue.runner, "forward_preemptible", None)
            if preemptible and forward_preemptible is not None:
                result: npt.NDArray[np.float32] = forward_preemptible(sequences, self._preempt)
                return result
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
        return np.concatenate(
            [
                self._forward(queue, sequences[:middle], preemptible),
                self._forward(queue, sequences[middle:], preemptible),
            ]
        )

    def _run_batch(
        self, queue: VariantQueue, batch: list[PendingPair], priority: Priority = Priority.INTERACTIVE
    ) -> None:
        self._batch_counter += 1
        batch_id = self._batch_counter
        requests = list({id(pair.request): pair.request for pair in batch}.values())
        background = priority is not Priority.INTERACTIVE
        if background:
            self._preempted_s = 0.0
        # Admission of interactive work ignores a running batch that will pause for it.
        self._yielding = background and hasattr(queue.runner, "forward_preemptible")
        started = time.perf_counter()
        self._busy_until = started + len(batch) * queue.seconds_per_pair
        try:
            probabilities = self._forward(queue, [pair.ids for pair in batch], preemptible=background)
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
        elapsed = finished - started - (self._preempted_s if background else 0.0)
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
            queue.record_batch(batch, elapsed, probabilities, priority)
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
