"""Admission control of one device: which requests its queues take, and which they refuse at once.

Each lane holds at most ``max_queue_pairs`` pairs, and a request whose pairs could not be computed before its
deadline (judged from the device's measured seconds per pair and the work already queued on it) is refused at once
instead of queued. Room is reserved at admission, before tokenizing, so a burst of large requests cannot all pass
while none of them is queued yet. Shadow work is admitted only into spare room and spare device time.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Sequence

import numpy as np

from app.engine.contract import Priority
from app.engine.errors import (
    DeadlineTooShortError,
    InferenceError,
    OverloadedError,
    RequestTooLargeError,
    VariantNotReadyError,
)
from app.engine.scheduler.queues import UnloadedRunner, VariantQueue
from app.engine.scheduler.requests import InferenceRequest, PendingPair, ShadowRefused

# Admit only work expected to finish within this share of the time a request has left: the estimate is an average
# and batches vary, so admitting right up to the deadline makes the last requests in line expire after their pairs
# were computed (measured: base CPU, 16 clients x 16 pairs, most requests expired at 27 s of a 30 s deadline).
ADMISSION_HEADROOM = 0.8


class Reservation:
    """Room held in a queue's lane for a request that was admitted but is still being tokenized.

    Admission counts it like queued pairs. Released when the pairs are queued, or when the request fails or goes
    away first.
    """

    __slots__ = ("count", "lane", "queue", "released")

    def __init__(self, queue: VariantQueue, count: int, priority: Priority = Priority.INTERACTIVE) -> None:
        self.queue = queue
        self.lane = queue.lanes[priority]
        self.count = count
        self.released = False


class AdmissionControl:
    """The queues of one device and the lock that guards them, held by the device worker.

    Admission reads, under the lock, what the worker thread publishes about the batch it runs: ``busy_until`` (when
    that batch should end) and ``yielding`` (it pauses between layers for interactive batches); the worker also sets
    ``stopping`` and ``failure``. The worker waits on ``condition`` for queued pairs."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.queues: list[VariantQueue] = []
        self.failure: BaseException | None = None
        self.condition = threading.Condition()
        self.stopping = False
        self.shadows_closed = False  # set by drop_shadows when the service drains
        self.busy_until = 0.0  # when the work taken from the queues should end: queued work starts after it
        self.yielding = False  # the batch now running is a background one that yields to interactive batches

    def add_queue(self, queue: VariantQueue) -> None:
        with self.condition:
            self.queues.append(queue)

    def remove_queue(self, queue: VariantQueue, reason: str = "unloaded") -> int:
        """Stop serving ``queue`` (its variant was unloaded or replaced); returns how many requests still had pairs in
        it, which fail (after a drain these are only abandoned ones). A batch already taken finishes."""
        with self.condition:
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
        running = 0.0 if priority is Priority.INTERACTIVE and self.yielding else max(0.0, self.busy_until - now)
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
        with self.condition:
            self._check_admission(queue, count, deadline, time.perf_counter(), priority)
            return self._reserve(queue, count, priority)

    def _check_shadow(self, queue: VariantQueue, count: int, max_pairs: int, max_client_backlog_s: float) -> None:
        """Raise ShadowRefused unless the shadow lane has room and the device is not busy with client work.
        Caller holds the lock."""
        if self.failure is not None or self.stopping:
            raise ShadowRefused("unavailable", f"device worker {self.device} is stopping or down")
        if self.shadows_closed:
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
        with self.condition:
            self._check_shadow(queue, count, max_pairs, max_client_backlog_s)
            return self._reserve(queue, count, Priority.SHADOW)

    @staticmethod
    def _reserve(queue: VariantQueue, count: int, priority: Priority) -> Reservation:
        reservation = Reservation(queue, count, priority)
        reservation.lane.reserved_pairs += count
        return reservation

    def drop_shadows(self, reason: str = "draining") -> int:
        """Fail every queued shadow (the service is draining); returns how many shadow requests were waiting."""
        with self.condition:
            self.shadows_closed = True  # and none is taken any more, even one still being tokenized
            leftover = [request for queue in self.queues for request in queue.clear([Priority.SHADOW])]
        for request in leftover:
            request.fail(ShadowRefused(reason, "shadow work dropped: the service is draining"), reason=reason)
        return len(leftover)

    def release(self, reservation: Reservation) -> None:
        """Give back an admitted request's room (it failed or went away before its pairs were queued)."""
        if reservation.released:  # only ever set to True, under the lock: the common path takes no lock
            return
        with self.condition:
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
        request.outputs = np.empty((len(pending), 2 * len(queue.labels)), dtype=np.float32)  # + logits (issue #26)
        with self.condition:
            if reservation is not None:
                self._release(reservation)
            now = time.perf_counter()
            if priority is Priority.SHADOW:
                self._check_shadow(queue, len(pending), max_shadow_pairs, max_client_backlog_s)
            else:
                self._check_admission(queue, len(pending), request.deadline, now, priority, first_admission=False)
            request.enqueued_at = now
            queue.put(pending, priority)
            self.condition.notify()
