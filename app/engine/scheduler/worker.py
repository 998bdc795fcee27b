"""The device worker: the single thread that owns one device and runs every forward pass of the variants on it.

When the device is free the worker takes what is waiting (no timer unless a variant asks for ``max_wait_ms``),
serving the highest-priority ready lane first and variants round-robin within a priority so none starves. Batches of
background lanes (batch, shadow) are kept short (``max_background_batch_s``), and where the runner allows it (torch)
they pause between encoder blocks to let ready interactive batches run first, so an interactive request waits for
one block at most (on CUDA the pauses are paced, ``stages.PacedYieldPoint``: the host waits for the device
there, else it would have queued the whole background batch ahead). A failing batch fails only its own requests; out
of memory splits a batch in halves.

Each batch goes through stages (``stages``): prepare, launch, and finish (collect the probabilities,
answer the requests, record metrics: ``pipeline.answer``). When the worker pipelines (``pipeline``, on
for CUDA devices by default), the finish runs on a post-stage thread (``pipeline``) in launch order while
the worker thread prepares and launches the next batch, so on a GPU the collate and host-to-device copy of batch N+1
and the answers of batch N-1 overlap batch N; at most ``PIPELINE_DEPTH`` batches are in flight. A request's compute
time is the device time of its batches (CUDA events on a GPU); the rest of its time in the engine is queue time.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence

import torch

from app import metrics
from app.engine.contract import Priority
from app.engine.errors import InferenceError
from app.engine.scheduler.admission import AdmissionControl, Reservation
from app.engine.scheduler.pipeline import Flight, PostStage, answer, fail_batch, fail_requests
from app.engine.scheduler.queues import VariantQueue
from app.engine.scheduler.requests import InferenceRequest, PendingPair
from app.engine.scheduler.stages import Launched, Stages

log = logging.getLogger(__name__)

# Batches in flight (launched, not yet answered) when the worker pipelines: batch N+1 is prepared and launched while
# batch N runs, and batch N is answered while N+1 runs.
PIPELINE_DEPTH = 2


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


class DeviceWorker:
    """The single thread that owns one device and runs batches for every variant placed on it."""

    def __init__(self, device: str, pipeline: bool | None = None) -> None:
        """``pipeline``: answer batches on a second thread while the next one runs (None: on CUDA devices only)."""
        self.device = device
        self.admission = AdmissionControl(device)
        self._next_queue = [0] * len(Priority)  # per lane: round-robin position
        self._batch_counter = 0
        self._preempting = False  # interactive batches are running inside a background batch's yield point
        self._current: Flight | None = None  # the batch being launched (whose yield points run interactive ones)
        self._in_flight_s = 0.0  # estimated device seconds of the batches launched and not yet answered (lock)
        self.pipeline = device.startswith("cuda") if pipeline is None else pipeline
        self._copy_stream: torch.cuda.Stream | None = None
        if self.pipeline and device.startswith("cuda") and torch.cuda.is_available():
            self._copy_stream = torch.cuda.Stream(device=torch.device(device))  # type: ignore[no-untyped-call]
        self._post = PostStage(device, self._finish, self._post_failed, PIPELINE_DEPTH) if self.pipeline else None
        self._thread = threading.Thread(target=self._run, name=f"device-worker-{device}", daemon=True)

    # -- what callers ask of the device's queues (admission decides) ---------------------------------------------

    @property
    def queues(self) -> list[VariantQueue]:
        return self.admission.queues

    @property
    def failure(self) -> BaseException | None:
        return self.admission.failure

    def add_queue(self, queue: VariantQueue) -> None:
        self.admission.add_queue(queue)

    def remove_queue(self, queue: VariantQueue, reason: str = "unloaded") -> int:
        return self.admission.remove_queue(queue, reason)

    def admit(
        self, queue: VariantQueue, count: int, deadline: float, priority: Priority = Priority.INTERACTIVE
    ) -> Reservation:
        return self.admission.admit(queue, count, deadline, priority)

    def admit_shadow(self, queue: VariantQueue, count: int, max_pairs: int, max_client_backlog_s: float) -> Reservation:
        return self.admission.admit_shadow(queue, count, max_pairs, max_client_backlog_s)

    def release(self, reservation: Reservation) -> None:
        self.admission.release(reservation)

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
        self.admission.submit(
            queue,
            request,
            sequences,
            reservation,
            priority,
            max_shadow_pairs=max_shadow_pairs,
            max_client_backlog_s=max_client_backlog_s,
        )

    def drop_shadows(self, reason: str = "draining") -> int:
        return self.admission.drop_shadows(reason)

    # -- the worker thread ---------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._post is not None:
            self._post.start()
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.admission.failure is None

    def stop(self, timeout: float | None = None) -> None:
        """Finish what clients queued (queued shadows are dropped) and answer every batch launched, then end the
        threads."""
        self.drop_shadows()
        with self.admission.condition:
            self.admission.stopping = True
            self.admission.condition.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _next_batch(self) -> tuple[VariantQueue, list[PendingPair], Priority] | None:
        """Wait for a ready lane: the highest priority first, and within a priority round-robin from the queue after
        the last one served. None once stopped and empty."""
        with self.admission.condition:
            while True:
                now = time.perf_counter()
                soonest: float | None = None
                count = len(self.admission.queues)
                for priority in Priority:
                    for offset in range(count):
                        position = (self._next_queue[priority] + offset) % count
                        queue = self.admission.queues[position]
                        wait = queue.seconds_until_ready(now, priority)
                        if wait is None:
                            continue
                        if wait <= 0 or self.admission.stopping:
                            batch = queue.take_batch(now, priority)
                            if not batch:
                                continue
                            self._next_queue[priority] = (position + 1) % count
                            return queue, batch, priority
                        soonest = wait if soonest is None else min(soonest, wait)
                if self.admission.stopping and soonest is None:
                    return None
                self.admission.condition.wait(soonest)

    def _run(self) -> None:
        try:
            while True:
                if self._post is not None:
                    self._post.reserve()  # at most PIPELINE_DEPTH batches in flight
                if (work := self._next_batch()) is None:
                    break
                flight = self._launch(*work)
                if flight is None:
                    if self._post is not None:
                        self._post.release()
                    continue
                flight.holds_slot = True
                self._dispatch(flight)
        except BaseException as error:  # the worker must never die silently: health checks read this
            self.admission.failure = error
            log.critical("device worker %s died: %r", self.device, error)
            self._fail_everything(error)
        finally:
            if self._post is not None:
                self._post.close()  # batches already launched are still answered (or failed)

    def _dispatch(self, flight: Flight) -> None:
        if self._post is not None:
            self._post.put(flight)
        else:
            self._finish(flight)

    def _preempt(self) -> None:
        """Yield point of a background batch (between two encoder blocks): launch the interactive batches that are
        ready now, then let the background batch go on. An interactive request thus waits for one block of a
        background batch, not all of it (on CUDA because the runner paces its yield points). Calls made while it runs
        (the interactive forward passes trigger the same hooks) return at once."""
        if self._preempting or self._current is None:
            return
        self._preempting = True
        outer = self._current
        started = time.perf_counter()
        try:
            while (work := self._ready_interactive()) is not None:
                flight = self._launch(*work)
                if flight is not None:
                    outer.nested.append(flight)
                    self._dispatch(flight)
        finally:
            outer.preempted_s += time.perf_counter() - started
            with self.admission.condition:  # busy for the background batch and the nested ones not answered yet
                self.admission.busy_until = time.perf_counter() + self._in_flight_s
            self.admission.yielding = True
            self._current = outer
            self._preempting = False

    def _ready_interactive(self) -> tuple[VariantQueue, list[PendingPair], Priority] | None:
        with self.admission.condition:
            now = time.perf_counter()
            count = len(self.admission.queues)
            for offset in range(count):
                position = (self._next_queue[Priority.INTERACTIVE] + offset) % count
                queue = self.admission.queues[position]
                if queue.seconds_until_ready(now) == 0.0:
                    batch = queue.take_batch(now)
                    if batch:
                        self._next_queue[Priority.INTERACTIVE] = (position + 1) % count
                        return queue, batch, Priority.INTERACTIVE
        return None

    def _launch(self, queue: VariantQueue, batch: list[PendingPair], priority: Priority) -> Flight | None:
        """Prepare and launch a batch (background batches yield to interactive ones between encoder blocks where the
        runner can); None when it failed, its requests failed with it."""
        self._batch_counter += 1
        flight = Flight(queue, batch, priority, self._batch_counter)
        stages = queue.stages(queue.runner, self._copy_stream)
        background = priority is not Priority.INTERACTIVE
        # Admission of interactive work ignores a running batch that will pause for it.
        self.admission.yielding = background and getattr(stages, "preemptible", False)
        flight.estimate_s = len(batch) * queue.seconds_per_pair
        with self.admission.condition:  # the device is busy until this batch and those launched before it are done
            self._in_flight_s += flight.estimate_s
            self.admission.busy_until = time.perf_counter() + self._in_flight_s
        self._current = flight
        try:
            flight.launches = self._launch_halves(stages, queue, [pair.ids for pair in batch], background)
        except Exception as error:
            self._landed(flight)
            fail_batch(queue, len(batch), flight.requests, error)
            return None
        except BaseException as error:
            self._landed(flight)
            self._fail_requests(flight.requests, error)
            raise
        finally:
            self._current = None
            self.admission.yielding = False  # its yield points are behind it
        return flight

    def _launch_halves(
        self, stages: Stages, queue: VariantQueue, sequences: list[list[int]], preemptible: bool
    ) -> list[Launched]:
        """On out-of-memory split the batch in halves and retry before giving up."""
        try:
            return [stages.launch(stages.prepare(sequences), self._preempt if preemptible else None)]
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
        return self._launch_halves(stages, queue, sequences[:middle], preemptible) + self._launch_halves(
            stages, queue, sequences[middle:], preemptible
        )

    def _landed(self, flight: Flight) -> None:
        """A batch left the device (answered or failed): the work still expected is that of the batches after it, from
        now on (so estimates that were too high do not pile up while batches run back to back)."""
        with self.admission.condition:
            self._in_flight_s = max(0.0, self._in_flight_s - flight.estimate_s)
            self.admission.busy_until = time.perf_counter() + self._in_flight_s

    def _finish(self, flight: Flight) -> None:
        """Collect a launched batch, answer its requests and record it. Runs on the post-stage thread when the
        worker pipelines (the one thread that answers requests then), else on the worker thread."""
        try:
            answer(flight, self._fail_requests)
        finally:
            self._landed(flight)

    def _post_failed(self, flight: Flight, error: BaseException) -> None:
        """A fatal fault while answering a batch on the post-stage thread: the worker is down, as if its own thread
        had met it."""
        self._fail_requests(flight.requests, error)
        if self.admission.failure is None:
            self.admission.failure = error
            log.critical("device worker %s died answering a batch: %r", self.device, error)
        self._fail_everything(error)

    def _fail_requests(self, requests: list[InferenceRequest], error: BaseException) -> None:
        fail_requests(requests, InferenceError(f"device worker {self.device} stopped: {error!r}"))

    def _fail_everything(self, error: BaseException) -> None:
        with self.admission.condition:
            for queue in self.admission.queues:
                self._fail_requests(queue.clear(), error)
