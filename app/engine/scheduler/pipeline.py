"""The device worker's last stage on its own thread: batches launched on the device are collected (waiting for the
device, probabilities to the host) and their requests answered in launch order, while the worker thread already
prepares and launches the next batch. At most ``depth`` batches are in flight: the worker takes the next batch from
the queues only when one is answered, so it never decides long before the device can start a batch (an interactive
request arriving then waits behind ``depth`` batches at most, not a backlog of launched ones).

``answer`` is the last stage itself (on this thread, or on the worker's when it does not pipeline): collect a flight,
answer its requests and record it. A request whose event loop is closed (shutdown) is logged and skipped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from app import tracing
from app.engine.contract import Priority
from app.engine.errors import InferenceError
from app.engine.scheduler.padding import padded_length
from app.engine.scheduler.queues import VariantQueue
from app.engine.scheduler.requests import InferenceRequest, PendingPair
from app.engine.scheduler.runner import probabilities_of
from app.engine.scheduler.stages import Launched
from app.tracing import spans as trace_spans

log = logging.getLogger(__name__)


class Flight:
    """One batch between its launch and its answers."""

    __slots__ = (
        "batch",
        "batch_id",
        "elapsed",
        "estimate_s",
        "holds_slot",
        "launched_at",
        "launches",
        "nested",
        "preempted_s",
        "priority",
        "queue",
        "requests",
    )

    def __init__(self, queue: VariantQueue, batch: list[PendingPair], priority: Priority, batch_id: int) -> None:
        self.queue = queue
        self.batch = batch
        self.priority = priority
        self.batch_id = batch_id
        self.requests: list[InferenceRequest] = list({id(pair.request): pair.request for pair in batch}.values())
        self.launches: list[Launched] = []  # one, or the halves of a batch split on out-of-memory
        self.nested: list[Flight] = []  # interactive batches launched inside this one's yield points
        self.preempted_s = 0.0  # host time those took (subtracted when this batch is timed on the host's clock)
        self.elapsed = 0.0  # device seconds charged to this batch, once collected
        self.estimate_s = 0.0  # its device seconds as admission control expects them (pairs x seconds per pair)
        self.holds_slot = False  # counted in the post stage's depth (the yield points' batches are not)
        self.launched_at = time.perf_counter()  # tracing (issue #27): where the batch's span starts


class PostStage:
    """A thread that finishes flights in the order they were handed over."""

    def __init__(
        self, device: str, finish: Callable[[Flight], None], fatal: Callable[[Flight, BaseException], None], depth: int
    ) -> None:
        self._flights: queue.Queue[Flight | None] = queue.Queue()
        self._slots = threading.Semaphore(depth)
        self._finish = finish
        self._fatal = fatal
        self._thread = threading.Thread(target=self._run, name=f"device-post-{device}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def reserve(self) -> None:
        """Wait until fewer than ``depth`` flights are in flight; the next flight handed over with ``holds_slot``
        gives the slot back once finished (call ``release`` if none is)."""
        self._slots.acquire()

    def release(self) -> None:
        self._slots.release()

    def put(self, flight: Flight) -> None:
        self._flights.put(flight)

    def close(self) -> None:
        """Finish every flight handed over so far, then end the thread (the worker thread calls it as it ends)."""
        if self._thread.is_alive():
            self._flights.put(None)
            self._thread.join()

    def _run(self) -> None:
        while (flight := self._flights.get()) is not None:
            try:
                self._finish(flight)
            except BaseException as error:  # the thread goes on: the worker waits for the slots it gives back
                try:
                    self._fatal(flight, error)
                except BaseException:
                    log.exception(
                        "handling a fault while answering batch %d failed; the post stage goes on", flight.batch_id
                    )
            finally:
                if flight.holds_slot:
                    self._slots.release()


def tell(answer: Callable[[Any], None], result: Any) -> None:
    """Answer a request (``complete`` or ``fail``); one whose event loop is closed (a server shutting down) has nobody
    to hear it, and the thread answering goes on."""
    try:
        answer(result)
    except RuntimeError as error:
        log.warning("a request could not be answered: %s", error)


def fail_requests(requests: list[InferenceRequest], failure: InferenceError) -> None:
    for request in requests:
        tell(request.fail, failure)


def fail_batch(queue: VariantQueue, pairs: int, requests: list[InferenceRequest], error: Exception) -> None:
    """The batch's requests fail with a 500; the worker and every other batch go on."""
    log.error(
        "inference failed for variant %s (batch of %d pairs): %s: %s",
        queue.name,
        pairs,
        type(error).__name__,
        error,
        exc_info=error,
    )
    fail_requests(
        requests, InferenceError(f"inference failed for variant {queue.name!r}: {type(error).__name__}: {error}")
    )


def answer(flight: Flight, stopped: Callable[[list[InferenceRequest], BaseException], None]) -> None:
    """Collect a launched batch, answer its requests and record it. A failing batch fails its own requests; a fatal
    fault (not an ``Exception``) fails them through ``stopped`` and is raised."""
    queue, batch = flight.queue, flight.batch
    try:
        collected = [launch.collect() for launch in flight.launches]
        probabilities = np.concatenate([rows for rows, _ in collected]) if len(collected) > 1 else collected[0][0]
        if probabilities.shape != (len(batch), 2 * len(queue.labels)):  # [probabilities | logits] (issue #26)
            raise ValueError(f"the runner returned shape {probabilities.shape} for {len(batch)} pairs")
    except Exception as error:
        fail_batch(queue, len(batch), flight.requests, error)
        return
    except BaseException as error:
        stopped(flight.requests, error)
        raise
    seconds = sum(seconds for _, seconds in collected)
    if flight.launches[0].device_timed:
        seconds -= sum(nested.elapsed for nested in flight.nested)
    else:
        seconds -= flight.preempted_s
    flight.elapsed = elapsed = max(0.0, seconds)
    finished = time.perf_counter()
    if tracing.STATE.active:  # tracing (issue #27): the batch's span, before its requests' spans end
        trace_batch(flight, finished)
    try:
        for pair, row in zip(batch, probabilities, strict=True):
            request = pair.request
            request.outputs[pair.index] = row
            if request.last_batch != flight.batch_id:
                request.last_batch = flight.batch_id
                request.compute_s += elapsed
            request.remaining -= 1
            if request.remaining == 0:
                tell(request.complete, finished)
    except Exception as error:  # answering must not take the worker down: fail what is still unanswered
        fail_batch(queue, len(batch), [request for request in flight.requests if request.remaining > 0], error)
        return
    try:
        queue.record_batch(batch, elapsed, probabilities_of(probabilities), flight.priority)
    except Exception:  # every request is answered; only bookkeeping was lost
        log.exception("recording batch metrics failed for variant %s; the worker goes on", queue.name)


# -- tracing (issue #27) ------------------------------------------------------------------------------------------


def trace_batch(flight: Flight, finished: float) -> None:
    """The span of one device batch, if any request it served is sampled; a tracing fault never fails the batch."""
    traces = [request.trace for request in flight.requests if request.trace is not None]
    if not traces:
        return
    try:
        attributes: dict[str, int | float | str] = {
            "xnli.batch.id": flight.batch_id,
            "xnli.batch.rows": len(flight.batch),
            "xnli.batch.padded_length": padded_length(max(pair.length for pair in flight.batch)),
            "xnli.batch.requests": len(flight.requests),
            "xnli.batch.device_s": flight.elapsed,
            "xnli.priority": flight.priority.label,
        }
        trace_spans.record_batch(traces, flight.launched_at, finished, attributes)
    except Exception:
        log.exception("tracing batch %d failed; its requests are answered all the same", flight.batch_id)
