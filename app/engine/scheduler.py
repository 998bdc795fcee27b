"""Queues and device workers: the dynamic batcher.

One worker thread per device runs every forward pass for the variants placed on that device, so the event loop
never blocks on a model and variants sharing a GPU do not fight over it. When the device is free the worker takes
what is waiting (no timer unless a variant asks for ``max_wait_ms``), serving variants round-robin so none starves.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from app import metrics
from app.engine.batching import BatchLimits, select_batch
from app.engine.labels import LABELS
from app.engine.runner import padded_length

if TYPE_CHECKING:
    from app.engine.runner import BatchRunner

log = logging.getLogger(__name__)


class InferenceError(RuntimeError):
    """The forward pass of a batch carrying this request failed; other batches are unaffected."""


class InferenceRequest:
    """One caller's pairs; answered when its last pair has been computed, whichever batches carried them."""

    __slots__ = (
        "_loop",
        "abandoned",
        "compute_s",
        "done_at",
        "enqueued_at",
        "future",
        "last_batch",
        "probabilities",
        "remaining",
    )

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.probabilities: npt.NDArray[np.float32] = np.empty((size, len(LABELS)), dtype=np.float32)
        self.remaining = size
        self.enqueued_at = 0.0
        self.done_at = 0.0
        self.compute_s = 0.0
        self.last_batch = -1
        self.abandoned = False

    def complete(self, now: float) -> None:
        self.done_at = now
        self._loop.call_soon_threadsafe(_resolve, self.future)

    def fail(self, error: BaseException) -> None:
        self.abandoned = True
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


class VariantQueue:
    """Pairs waiting for one variant. Only touched under its device worker's lock."""

    def __init__(self, name: str, runner: BatchRunner, limits: BatchLimits, max_wait_ms: float) -> None:
        self.name = name
        self.runner = runner
        self.limits = limits
        self.max_wait_s = max_wait_ms / 1000.0
        self.pairs: deque[PendingPair] = deque()
        self.batches_run = 0
        self._depth = metrics.QUEUE_DEPTH.labels(name)
        self._inference = metrics.INFERENCE_DURATION.labels(name)
        self._batch_size = metrics.BATCH_SIZE.labels(name)
        self._batch_tokens = metrics.BATCH_TOKENS.labels(name)
        self._padding = metrics.BATCH_PADDING_RATIO.labels(name)
        self._predictions = [metrics.PREDICTIONS.labels(name, label) for label in LABELS]

    def seconds_until_ready(self, now: float) -> float | None:
        """0 when a batch should run now, a wait in seconds while ``max_wait_ms`` lets it fill, None when empty."""
        if not self.pairs:
            return None
        if self.max_wait_s <= 0 or len(self.pairs) >= self.limits.max_batch_size:
            return 0.0
        return max(0.0, self.pairs[0].request.enqueued_at + self.max_wait_s - now)

    def put(self, pairs: Sequence[PendingPair]) -> None:
        self.pairs.extend(pairs)
        self._depth.inc(len(pairs))

    def clear(self) -> list[InferenceRequest]:
        """Empty the queue; returns the distinct requests that still had pairs waiting."""
        requests = list({id(pair.request): pair.request for pair in self.pairs}.values())
        self._depth.dec(len(self.pairs))
        self.pairs.clear()
        return requests

    def take_batch(self) -> list[PendingPair]:
        window: list[PendingPair] = []
        dropped = 0
        while self.pairs and len(window) < self.limits.window:
            pair = self.pairs.popleft()
            if pair.request.abandoned:
                dropped += 1
            else:
                window.append(pair)
        chosen = select_batch([pair.length for pair in window], self.limits)
        chosen_positions = set(chosen)
        self.pairs.extendleft(
            reversed([pair for position, pair in enumerate(window) if position not in chosen_positions])
        )
        self._depth.dec(len(chosen) + dropped)
        return [window[position] for position in chosen]

    def record_batch(
        self, pairs: Sequence[PendingPair], elapsed: float, probabilities: npt.NDArray[np.float32]
    ) -> None:
        real_tokens = sum(pair.length for pair in pairs)
        padded_tokens = len(pairs) * padded_length(max(pair.length for pair in pairs))
        self._inference.observe(elapsed)
        self._batch_size.observe(len(pairs))
        self._batch_tokens.observe(padded_tokens)
        self._padding.observe(1.0 - real_tokens / padded_tokens)
        for label_index, count in enumerate(np.bincount(probabilities.argmax(axis=1), minlength=len(LABELS))):
            if count:
                self._predictions[label_index].inc(int(count))


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
        self._thread = threading.Thread(target=self._run, name=f"device-worker-{device}", daemon=True)

    def add_queue(self, queue: VariantQueue) -> None:
        with self._condition:
            self.queues.append(queue)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.failure is None

    def submit(self, queue: VariantQueue, request: InferenceRequest, sequences: Sequence[list[int]]) -> None:
        pending = [PendingPair(request, index, ids) for index, ids in enumerate(sequences)]
        with self._condition:
            request.enqueued_at = time.perf_counter()
            queue.put(pending)
            self._condition.notify()

    def pending_pairs(self) -> int:
        with self._condition:
            return sum(len(queue.pairs) for queue in self.queues)

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
                        batch = queue.take_batch()
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
            log.exception("device worker %s died", self.device)
            self._fail_everything(error)

    def _run_batch(self, queue: VariantQueue, batch: list[PendingPair]) -> None:
        self._batch_counter += 1
        batch_id = self._batch_counter
        started = time.perf_counter()
        try:
            probabilities = queue.runner.forward([pair.ids for pair in batch])
        except Exception as error:
            log.exception("forward pass failed for variant %s (batch of %d pairs)", queue.name, len(batch))
            failure = InferenceError(f"inference failed for variant {queue.name!r}: {type(error).__name__}: {error}")
            for request in {id(pair.request): pair.request for pair in batch}.values():
                request.fail(failure)
            return
        finished = time.perf_counter()
        elapsed = finished - started
        queue.batches_run += 1
        for pair, row in zip(batch, probabilities, strict=True):
            request = pair.request
            request.probabilities[pair.index] = row
            if request.last_batch != batch_id:
                request.last_batch = batch_id
                request.compute_s += elapsed
            request.remaining -= 1
            if request.remaining == 0:
                request.complete(finished)
        queue.record_batch(batch, elapsed, probabilities)

    def _fail_everything(self, error: BaseException) -> None:
        with self._condition:
            for queue in self.queues:
                for request in queue.clear():
                    request.fail(InferenceError(f"device worker {self.device} stopped: {error}"))
