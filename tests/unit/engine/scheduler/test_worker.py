"""The batcher with a real worker thread and a recording stand-in for the model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from app.engine.errors import (
    DeadlineExceededError,
    DeadlineTooShortError,
    InferenceError,
    OverloadedError,
    RequestTooLargeError,
)
from app.engine.scheduler.admission import ADMISSION_HEADROOM
from app.engine.scheduler.batching import BatchLimits
from app.engine.scheduler.queues import VariantQueue
from app.engine.scheduler.requests import InferenceRequest, PendingPair
from app.engine.scheduler.worker import DeviceWorker
from app.engine.tasks.nli import LABELS


class RecordingRunner:
    """Answers with the first token id in column 0, so tests can check which result reached which pair."""

    def __init__(self, name: str, journal: list[tuple[str, int]], gate: threading.Event | None = None) -> None:
        self.name = name
        self.journal = journal
        self.gate = gate
        self.fail = False
        self.computed: list[int] = []

    def forward(self, sequences: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        if self.gate is not None:
            self.gate.wait(5)
        self.journal.append((self.name, len(sequences)))
        if self.fail:
            raise RuntimeError("injected fault")
        self.computed.extend(sequence[0] for sequence in sequences)
        result = np.zeros((len(sequences), 6), dtype=np.float32)  # [probabilities | logits] (issue #26)
        result[:, 0] = [sequence[0] for sequence in sequences]
        result[:, 1] = 1.0
        return result


def add_queue(
    worker: DeviceWorker, runner: RecordingRunner, max_batch_size: int = 32, max_wait_ms: float = 0.0
) -> VariantQueue:
    queue = VariantQueue(runner.name, runner, BatchLimits(max_batch_size, 100_000), max_wait_ms, labels=LABELS)
    worker.add_queue(queue)
    return queue


def submit(worker: DeviceWorker, queue: VariantQueue, first_tokens: Sequence[int]) -> InferenceRequest:
    request = InferenceRequest(len(first_tokens), asyncio.get_running_loop())
    worker.submit(queue, request, [[token, 5, 6] for token in first_tokens])
    return request


async def test_split_request_is_answered_once_all_its_batches_ran(worker: DeviceWorker) -> None:
    journal: list[tuple[str, int]] = []
    queue = add_queue(worker, RecordingRunner("a", journal), max_batch_size=32)
    worker.start()
    request = submit(worker, queue, list(range(100)))
    await asyncio.wait_for(request.future, 5)
    assert journal == [("a", 32), ("a", 32), ("a", 32), ("a", 4)]
    assert request.outputs[:, 0].tolist() == list(range(100))
    assert request.compute_s > 0
    assert request.done_at >= request.enqueued_at


async def test_waiting_requests_share_batches(worker: DeviceWorker) -> None:
    journal: list[tuple[str, int]] = []
    gate = threading.Event()
    queue = add_queue(worker, RecordingRunner("a", journal, gate))
    worker.start()
    first = submit(worker, queue, [0])
    await asyncio.sleep(0.05)  # the worker is now inside the gated first batch
    rest = [submit(worker, queue, [index]) for index in range(1, 11)]
    gate.set()
    await asyncio.wait_for(asyncio.gather(first.future, *(request.future for request in rest)), 5)
    assert journal == [("a", 1), ("a", 10)]
    assert [request.outputs[0, 0] for request in rest] == list(range(1, 11))


async def test_variants_on_one_device_are_served_round_robin(worker: DeviceWorker) -> None:
    journal: list[tuple[str, int]] = []
    queue_a = add_queue(worker, RecordingRunner("a", journal), max_batch_size=4)
    queue_b = add_queue(worker, RecordingRunner("b", journal), max_batch_size=4)
    requests = [submit(worker, queue_a, [index]) for index in range(40)]  # a's backlog is queued first ...
    requests += [submit(worker, queue_b, [index]) for index in range(12)]  # ... then b's
    worker.start()
    await asyncio.wait_for(asyncio.gather(*(request.future for request in requests)), 5)
    order = [name for name, _ in journal]
    assert order[:7] == ["a", "b", "a", "b", "a", "b", "a"]  # b is not stuck behind a's backlog
    assert order.count("a") == 10
    assert order.count("b") == 3


async def test_max_wait_collects_a_bigger_batch(worker: DeviceWorker) -> None:
    journal: list[tuple[str, int]] = []
    queue = add_queue(worker, RecordingRunner("a", journal), max_wait_ms=300)
    worker.start()
    requests = []
    for index in range(3):
        requests.append(submit(worker, queue, [index]))
        await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.gather(*(request.future for request in requests)), 5)
    assert journal == [("a", 3)]


async def test_full_batch_does_not_wait_for_max_wait(worker: DeviceWorker) -> None:
    journal: list[tuple[str, int]] = []
    queue = add_queue(worker, RecordingRunner("a", journal), max_batch_size=2, max_wait_ms=10_000)
    worker.start()
    started = time.perf_counter()
    request = submit(worker, queue, [1, 2])
    await asyncio.wait_for(request.future, 5)
    assert time.perf_counter() - started < 1.0


async def test_failed_forward_fails_only_its_batch(worker: DeviceWorker) -> None:
    journal: list[tuple[str, int]] = []
    broken = RecordingRunner("broken", journal)
    broken.fail = True
    queue_broken = add_queue(worker, broken)
    queue_ok = add_queue(worker, RecordingRunner("ok", journal))
    worker.start()
    failing = submit(worker, queue_broken, [1, 2])
    fine = submit(worker, queue_ok, [3])
    with pytest.raises(InferenceError, match="injected fault"):
        await asyncio.wait_for(failing.future, 5)
    await asyncio.wait_for(fine.future, 5)
    assert worker.alive
    assert fine.outputs[0, 0] == 3


async def test_abandoned_request_is_not_computed(worker: DeviceWorker) -> None:
    journal: list[tuple[str, int]] = []
    gate = threading.Event()
    runner = RecordingRunner("a", journal, gate)
    queue = add_queue(worker, runner)
    worker.start()
    blocker = submit(worker, queue, [1])
    await asyncio.sleep(0.05)
    abandoned = submit(worker, queue, [2, 3])
    abandoned.abandon("disconnected")
    kept = submit(worker, queue, [4])
    gate.set()
    await asyncio.wait_for(asyncio.gather(blocker.future, kept.future), 5)
    assert runner.computed == [1, 4]
    assert queue.pairs == type(queue.pairs)()


def test_admission_counts_queued_pairs_and_the_running_batch(worker: DeviceWorker) -> None:
    queue = add_queue(worker, RecordingRunner("a", []))
    queue.seconds_per_pair = 0.1
    now = time.perf_counter()
    worker.admit(queue, 10, now + 10 * 0.1 / ADMISSION_HEADROOM + 0.05)  # 1 s of work fits 80% of 1.3 s
    with pytest.raises(OverloadedError, match="cannot answer within the deadline"):
        worker.admit(queue, 1, now + 1.3)  # alone it would fit; behind the first request's 1 s it does not
    worker.admission.busy_until = time.perf_counter() + 5.0  # a batch of 5 s is running
    with pytest.raises(OverloadedError) as raised:
        worker.admit(queue, 1, time.perf_counter() + 5.5)
    assert raised.value.retry_after_s >= 4.0


async def test_request_that_cannot_finish_in_time_is_dropped_before_compute(worker: DeviceWorker) -> None:
    journal: list[tuple[str, int]] = []
    gate = threading.Event()
    runner = RecordingRunner("a", journal, gate)
    queue = add_queue(worker, runner, max_batch_size=2)
    worker.start()
    blocker = submit(worker, queue, [1])
    await asyncio.sleep(0.05)
    queue.seconds_per_pair = 1.0  # each pair takes a second from now on
    hopeless = InferenceRequest(4, asyncio.get_running_loop(), deadline=time.perf_counter() + 3.0)
    with worker.admission.condition:  # queued behind admission's back: 4 s of work cannot fit 3 s
        hopeless.enqueued_at = time.perf_counter()
        queue.put([PendingPair(hopeless, index, [token, 5, 6]) for index, token in enumerate((2, 3, 4, 5))])
    kept = submit(worker, queue, [6])
    gate.set()
    await asyncio.wait_for(asyncio.gather(blocker.future, kept.future), 5)
    with pytest.raises(DeadlineExceededError, match="deadline cannot be met: 4 pairs left"):
        await asyncio.wait_for(hopeless.future, 5)
    assert runner.computed == [1, 6]


def test_request_larger_than_the_queue_is_too_large_not_overloaded(worker: DeviceWorker) -> None:
    queue = VariantQueue("a", RecordingRunner("a", []), BatchLimits(32, 100_000), max_queue_pairs=10, labels=LABELS)
    worker.add_queue(queue)
    with pytest.raises(RequestTooLargeError, match="queues at most max_queue_pairs=10") as raised:
        worker.admit(queue, 11, time.perf_counter() + 30)  # the queue is empty: waiting would never help
    assert raised.value.limit == 10
    worker.admit(queue, 10, time.perf_counter() + 30)


def test_deadline_shorter_than_an_idle_device_needs_is_a_client_error(worker: DeviceWorker) -> None:
    queue = add_queue(worker, RecordingRunner("a", []))
    queue.min_forward_s = 0.01
    queue.seconds_per_pair = 5.0  # under load the estimate rises: the floor, and with it the 422, does not move
    with pytest.raises(DeadlineTooShortError, match=r"its fastest forward pass takes 10\.0 ms") as raised:
        worker.admit(queue, 2, time.perf_counter() + 0.000001)
    assert raised.value.minimum_s == pytest.approx(0.01)
    with pytest.raises(OverloadedError):  # above the floor, a deadline the backlog cannot meet is overload: 429
        worker.admit(queue, 2, time.perf_counter() + 0.05)


def test_admitted_requests_hold_room_while_they_are_tokenized(worker: DeviceWorker) -> None:
    queue = add_queue(worker, RecordingRunner("a", []))
    queue.seconds_per_pair = 0.1
    deadline = time.perf_counter() + 10.5  # 8.4 s admissible: 80 pairs, not 96
    reservations = [worker.admit(queue, 16, deadline) for _ in range(5)]
    assert queue.reserved_pairs == 80
    assert not queue.pairs  # nothing is queued yet, and still the sixth burst request is refused
    with pytest.raises(OverloadedError, match="cannot answer within the deadline"):
        worker.admit(queue, 16, deadline)
    worker.release(reservations[0])
    worker.release(reservations[0])  # releasing twice gives the room back once
    assert queue.reserved_pairs == 64
    worker.admit(queue, 16, deadline)


async def test_reservation_turns_into_queued_pairs(worker: DeviceWorker) -> None:
    queue = add_queue(worker, RecordingRunner("a", []))
    reservation = worker.admit(queue, 2, time.perf_counter() + 30)
    request = InferenceRequest(2, asyncio.get_running_loop(), time.perf_counter() + 30)
    worker.submit(queue, request, [[1, 5], [2, 5]], reservation)
    assert (queue.reserved_pairs, len(queue.pairs)) == (0, 2)
    worker.release(reservation)
    assert queue.reserved_pairs == 0


class ShortRunner(RecordingRunner):
    """A broken runner: one row short for every batch."""

    def forward(self, sequences: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        return super().forward(sequences)[1:]


async def test_a_fault_after_the_forward_pass_fails_the_batch_and_keeps_the_worker(worker: DeviceWorker) -> None:
    short = add_queue(worker, ShortRunner("short", []))
    fine = add_queue(worker, RecordingRunner("fine", []))
    worker.start()
    with pytest.raises(InferenceError, match=r"returned shape \(1, 6\) for 2 pairs"):
        await asyncio.wait_for(submit(worker, short, [1, 2]).future, 5)
    answered = submit(worker, fine, [7])
    await asyncio.wait_for(answered.future, 5)
    assert worker.alive
    assert answered.outputs[0, 0] == 7


async def test_failing_bookkeeping_keeps_the_answer_and_the_worker(
    worker: DeviceWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = add_queue(worker, RecordingRunner("a", []))

    def broken_record_batch(*args: object) -> None:
        raise ValueError("metrics backend exploded")

    monkeypatch.setattr(queue, "record_batch", broken_record_batch)
    worker.start()
    first = submit(worker, queue, [3])
    await asyncio.wait_for(first.future, 5)
    second = submit(worker, queue, [4])
    await asyncio.wait_for(second.future, 5)
    assert worker.alive
    assert (first.outputs[0, 0], second.outputs[0, 0]) == (3, 4)
