"""The device worker's last stage on its own thread: batches launched on the device are collected (waiting for the
device, probabilities to the host) and their requests answered in launch order, while the worker thread already
prepares and launches the next batch. At most ``depth`` batches are in flight: the worker takes the next batch from
the queues only when one is answered, so it never decides long before the device can start a batch (an interactive
request arriving then waits behind ``depth`` batches at most, not a backlog of launched ones).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from app.engine.queues import VariantQueue
from app.engine.requests import InferenceRequest, PendingPair, Priority
from app.engine.stages import Launched

log = logging.getLogger(__name__)


class Flight:
    """One batch between its launch and its answers."""

    __slots__ = (
        "batch",
        "batch_id",
        "elapsed",
        "estimate_s",
        "holds_slot",
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
