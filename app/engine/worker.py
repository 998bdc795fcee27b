"""The device worker: the single thread that owns one device and runs every forward pass of the variants on it.

When the device is free the worker takes what is waiting (no timer unless a variant asks for ``max_wait_ms``),
serving the highest-priority ready lane first and variants round-robin within a priority so none starves. Batches of
background lanes (batch, shadow) are kept short (``max_background_batch_s``), and where the runner allows it (torch)
they pause between encoder blocks to let ready interactive batches run first, so an interactive request waits for
one block at most. A failing batch fails only its own requests; out of memory splits a batch in halves.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import numpy.typing as npt
import torch

from app import metrics
from app.engine.admission import AdmissionControl
from app.engine.errors import InferenceError
from app.engine.labels import LABELS
from app.engine.queues import VariantQueue
from app.engine.requests import InferenceRequest, PendingPair, Priority

log = logging.getLogger(__name__)


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


class DeviceWorker(AdmissionControl):
    """The single thread that owns one device and runs batches for every variant placed on it."""

    def __init__(self, device: str) -> None:
        super().__init__(device)
        self._next_queue = [0] * len(Priority)  # per lane: round-robin position
        self._batch_counter = 0
        self._preempting = False  # interactive batches are running inside a background batch's yield point
        self._preempted_s = 0.0  # time those took, not charged to the background batch
        self._thread = threading.Thread(target=self._run, name=f"device-worker-{device}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.failure is None

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
