"""A variant's waiting pairs, one lane per priority, the length-grouped batches taken from them, and the measured
device time per pair (the cost model that admission control and ``Retry-After`` read)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from app import metrics
from app.engine.contract import Priority
from app.engine.errors import DeadlineExceededError, InferenceError
from app.engine.scheduler.batch_metrics import BatchMetrics
from app.engine.scheduler.batching import BatchLimits, select_batch
from app.engine.scheduler.requests import InferenceRequest, PendingPair
from app.engine.scheduler.stages import StageFactory, own_stages

if TYPE_CHECKING:
    from prometheus_client import Gauge

    from app.engine.scheduler.runner import BatchRunner

# Weight of the newest batch in the seconds-per-pair estimate that admission control uses: it rises fast and falls
# slowly, because under-estimating admits work that then expires after being computed (bigger batches cost more per
# pair on a CPU), while over-estimating only answers a few more 429s.
_RATE_RISE = 0.5
_RATE_FALL = 0.1


class UnloadedRunner:
    """Stands in for the runner of a queue taken off its worker, so that the queue no longer holds the model."""

    def __init__(self, name: str) -> None:
        self.name = name

    def forward(self, sequences: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        raise InferenceError(f"variant {self.name!r} was unloaded")


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
    """Pairs waiting for one variant, in one lane per priority.

    Locking: the lanes (their pairs and reservations) and ``retired`` are read and changed only under the device
    worker's lock. One thread, the one that answers batches (the worker thread, or its post stage when it pipelines),
    writes ``seconds_per_pair`` (in ``record_batch``, outside the lock: one float store, so admission, which reads it
    under the lock, sees either the old or the new estimate), and it alone touches ``batches_run`` and the batch
    metrics."""

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
        stages: StageFactory = own_stages,
        *,
        labels: Sequence[str],
    ) -> None:
        self.name = name
        self.runner = runner
        self.labels = tuple(labels)  # the task's output columns: every answer row has one score per label
        self.stages = stages  # the variant's backend's way to split a batch (``Backend.stages``)
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
        self._metrics = BatchMetrics(name, self.labels)

    @property
    def pairs(self) -> deque[PendingPair]:
        """The interactive lane's pairs."""
        return self.lanes[Priority.INTERACTIVE].pairs

    @property
    def reserved_pairs(self) -> int:
        """Interactive pairs admitted and still being tokenized."""
        return self.lanes[Priority.INTERACTIVE].reserved_pairs

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
        """The answering thread only, outside the lock: refine the cost model and observe the batch's metrics."""
        sample = elapsed / len(pairs)
        weight = _RATE_RISE if sample > self.seconds_per_pair else _RATE_FALL
        self.seconds_per_pair = (
            sample if self.seconds_per_pair <= 0 else (1 - weight) * self.seconds_per_pair + weight * sample
        )
        self.batches_run += 1
        self._metrics.observe(pairs, elapsed, probabilities, priority)
