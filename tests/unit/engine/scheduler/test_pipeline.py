"""The device worker's stage pipeline: batch N+1 prepared and launched, batch N-1 answered, while batch N runs."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from app.engine.backends.torch_stages import TorchStages
from app.engine.contract import Priority
from app.engine.engine import Engine
from app.engine.errors import InferenceError
from app.engine.models.catalogue import load_catalogue
from app.engine.scheduler.batching import BatchLimits
from app.engine.scheduler.pipeline import Flight, PostStage
from app.engine.scheduler.queues import VariantQueue
from app.engine.scheduler.requests import InferenceRequest
from app.engine.scheduler.stages import PacedYieldPoint, device_yield_point
from app.engine.scheduler.worker import DeviceWorker
from app.engine.tasks.nli import LABELS


class FakeLaunch:
    """A launched batch whose device work ends when the test opens its gate; ``seconds`` is its device time."""

    device_timed = True

    def __init__(self, runner: StagedRunner, tokens: list[int], seconds: float) -> None:
        self.runner = runner
        self.tokens = tokens
        self.seconds = seconds

    def collect(self) -> tuple[npt.NDArray[np.float32], float]:
        gate = self.runner.gates.get(self.tokens[0])
        if gate is not None:
            assert gate.wait(5)
        self.runner.journal.append(("collect", self.tokens[0]))
        if self.tokens[0] in self.runner.fail_in.get("collect", ()):
            raise RuntimeError("injected collect fault")
        rows = np.zeros((len(self.tokens), 6), dtype=np.float32)  # [probabilities | logits] (issue #26)
        rows[:, 0] = self.tokens
        return rows, self.seconds


class StagedRunner:
    """Stages itself (``prepare`` and ``launch``); answers each pair with its first token id in column 0."""

    preemptible = True

    def __init__(self, seconds: float = 0.25) -> None:
        self.journal: list[tuple[str, int]] = []
        self.gates: dict[int, threading.Event] = {}  # first token of a batch -> when its device work ends
        self.fail_in: dict[str, set[int]] = {}  # stage -> first tokens of the batches that fail there
        self.seconds = seconds
        self.on_launch: Callable[[int, Callable[[], None] | None], None] | None = None

    def forward(self, sequences: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        raise AssertionError("a staged runner is never run whole")

    def prepare(self, sequences: Sequence[Sequence[int]]) -> list[int]:
        tokens = [sequence[0] for sequence in sequences]
        self.journal.append(("prepare", tokens[0]))
        if tokens[0] in self.fail_in.get("prepare", ()):
            raise RuntimeError("injected prepare fault")
        return tokens

    def launch(self, prepared: list[int], yield_point: Callable[[], None] | None = None) -> FakeLaunch:
        self.journal.append(("launch", prepared[0]))
        if prepared[0] in self.fail_in.get("launch", ()):
            raise RuntimeError("injected launch fault")
        if self.on_launch is not None:
            self.on_launch(prepared[0], yield_point)
        return FakeLaunch(self, prepared, self.seconds)


def add_queue(worker: DeviceWorker, runner: object, max_batch_size: int = 1) -> VariantQueue:
    queue = VariantQueue("a", runner, BatchLimits(max_batch_size, 100_000), labels=LABELS)  # type: ignore[arg-type]
    worker.add_queue(queue)
    return queue


def submit(
    worker: DeviceWorker, queue: VariantQueue, tokens: Sequence[int], priority: Priority = Priority.INTERACTIVE
) -> InferenceRequest:
    request = InferenceRequest(len(tokens), asyncio.get_running_loop())
    worker.submit(queue, request, [[token, 5, 6] for token in tokens], priority=priority)
    return request


async def wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_the_next_batch_is_launched_while_one_runs_and_answers_come_in_launch_order() -> None:
    worker = DeviceWorker("test", pipeline=True)
    runner = StagedRunner()
    runner.gates = {token: threading.Event() for token in (1, 2, 3)}
    queue = add_queue(worker, runner)
    requests = [submit(worker, queue, [token]) for token in (1, 2, 3)]
    worker.start()
    try:
        await wait_until(lambda: ("launch", 2) in runner.journal)
        await asyncio.sleep(0.05)
        # Batch 2 was prepared and launched while batch 1 runs; batch 3 waits for a slot (two batches in flight).
        assert runner.journal == [("prepare", 1), ("launch", 1), ("prepare", 2), ("launch", 2)]
        assert not any(request.future.done() for request in requests)
        for token in (3, 2, 1):  # the device ends them in any order: answers still come in launch order
            runner.gates[token].set()
        await asyncio.wait_for(asyncio.gather(*(request.future for request in requests)), 5)
        collects = [token for stage, token in runner.journal if stage == "collect"]
        assert collects == [1, 2, 3]
        assert [request.outputs[0, 0] for request in requests] == [1, 2, 3]
    finally:
        worker.stop(5)


async def test_serial_worker_answers_each_batch_before_it_takes_the_next() -> None:
    worker = DeviceWorker("test", pipeline=False)
    runner = StagedRunner()
    queue = add_queue(worker, runner)
    requests = [submit(worker, queue, [token]) for token in (1, 2)]
    worker.start()
    try:
        await asyncio.wait_for(asyncio.gather(*(request.future for request in requests)), 5)
        assert runner.journal == [(stage, token) for token in (1, 2) for stage in ("prepare", "launch", "collect")]
    finally:
        worker.stop(5)


@pytest.mark.parametrize("stage", ["prepare", "launch", "collect"])
async def test_a_failing_stage_fails_only_its_batch(worker: DeviceWorker, stage: str) -> None:
    runner = StagedRunner()
    runner.fail_in = {stage: {2}}
    queue = add_queue(worker, runner)
    requests = [submit(worker, queue, [token]) for token in (1, 2, 3)]
    worker.start()
    results = await asyncio.wait_for(
        asyncio.gather(*(request.future for request in requests), return_exceptions=True), 5
    )
    assert results[0] is None
    assert isinstance(results[1], InferenceError)
    assert f"injected {stage} fault" in str(results[1])
    assert results[2] is None
    assert [requests[0].outputs[0, 0], requests[2].outputs[0, 0]] == [1, 3]
    assert worker.alive


async def test_stop_waits_for_the_batches_in_flight() -> None:
    worker = DeviceWorker("test", pipeline=True)
    runner = StagedRunner()
    runner.gates = {1: threading.Event(), 2: threading.Event()}
    queue = add_queue(worker, runner)
    requests = [submit(worker, queue, [token]) for token in (1, 2)]
    worker.start()
    await wait_until(lambda: ("launch", 2) in runner.journal)
    stopper = threading.Thread(target=worker.stop, args=(10,))
    stopper.start()
    await asyncio.sleep(0.1)
    assert stopper.is_alive()  # two batches are still on the device
    runner.gates[1].set()
    runner.gates[2].set()
    await asyncio.to_thread(stopper.join, 5)
    assert not stopper.is_alive()
    await asyncio.wait_for(asyncio.gather(*(request.future for request in requests)), 5)
    assert [request.outputs[0, 0] for request in requests] == [1, 2]


async def test_compute_time_is_the_device_time_of_the_batches_and_the_rest_is_queue_time(worker: DeviceWorker) -> None:
    runner = StagedRunner(seconds=0.25)
    queue = add_queue(worker, runner, max_batch_size=2)
    request = submit(worker, queue, [1, 2, 3])  # two batches
    worker.start()
    await asyncio.wait_for(request.future, 5)
    assert request.compute_s == pytest.approx(0.5)
    assert queue.seconds_per_pair > 0


async def test_interactive_batches_run_in_a_background_batchs_yield_point_are_not_charged_to_it(
    worker: DeviceWorker,
) -> None:
    runner = StagedRunner(seconds=1.0)
    queue = add_queue(worker, runner, max_batch_size=4)
    interactive: list[InferenceRequest] = []

    def on_launch(token: int, yield_point: Callable[[], None] | None) -> None:
        if token == 10 and yield_point is not None:  # the background batch reaches its first yield point
            interactive.append(submit_threadsafe(worker, queue, loop, [1]))
            yield_point()

    loop = asyncio.get_running_loop()
    runner.on_launch = on_launch
    background = submit(worker, queue, [10, 11], Priority.BATCH)
    worker.start()
    await asyncio.wait_for(background.future, 5)
    await asyncio.wait_for(interactive[0].future, 5)
    launches = [token for stage, token in runner.journal if stage == "launch"]
    assert launches == [10, 1]  # the interactive batch ran inside the background one
    assert interactive[0].compute_s == pytest.approx(1.0)
    assert background.compute_s == pytest.approx(0.0)  # 1 s of device time, all of it the nested batch's


async def test_admission_expects_no_running_work_once_every_batch_was_answered(worker: DeviceWorker) -> None:
    """Estimates above the real device time must not pile up while batches run back to back (admission would read
    a device busy long after it went idle, and refuse requests it could serve)."""
    runner = StagedRunner(seconds=0.001)
    queue = VariantQueue("a", runner, BatchLimits(1, 100_000), seconds_per_pair=1.0, labels=LABELS)
    worker.add_queue(queue)
    requests = [submit(worker, queue, [token]) for token in range(20)]
    worker.start()
    await asyncio.wait_for(asyncio.gather(*(request.future for request in requests)), 5)
    await wait_until(lambda: worker.admission.busy_until <= time.perf_counter())


def submit_threadsafe(
    worker: DeviceWorker, queue: VariantQueue, loop: asyncio.AbstractEventLoop, tokens: Sequence[int]
) -> InferenceRequest:
    """Queue a request from the worker thread (as if it had arrived while the batch ran)."""
    request = InferenceRequest(len(tokens), loop)
    worker.submit(queue, request, [[token, 5, 6] for token in tokens])
    return request


def encoded_mix(engine: Engine) -> list[tuple[list[list[int]], Priority]]:
    """Requests of mixed sizes, lengths and priorities, made of sentences written for this test."""
    encoder = engine.variants["xlmr-mnli"].encoder
    assert encoder is not None
    sentence = "the small boat crossed a wide river while children watched from the old stone bridge"
    words = sentence.split(" ")
    mix: list[tuple[list[list[int]], Priority]] = []
    for index in range(12):
        pairs = [
            (" ".join(words[: 3 + (index * 5 + offset) % 14]), " ".join(words[offset % 5 : offset % 5 + 4]))
            for offset in range(1 + index % 4)
        ]
        mix.append((encoder.encode(pairs).ids, Priority.BATCH if index % 3 == 2 else Priority.INTERACTIVE))
    return mix


async def test_pipelined_and_serial_workers_give_identical_probabilities(demo_catalogue: Path) -> None:
    engine = Engine(load_catalogue(demo_catalogue, ["xlmr-mnli"]), tokenization_workers=1, torch_threads=1)
    engine.load()
    try:
        runtime = engine.variants["xlmr-mnli"]
        assert runtime.queue is not None
        runner = runtime.queue.runner
        mix = encoded_mix(engine)
        answers: dict[bool, list[npt.NDArray[np.float32]]] = {}
        for pipeline in (False, True):
            worker = DeviceWorker("cpu", pipeline=pipeline)
            queue = VariantQueue("xlmr-mnli", runner, BatchLimits(4, 4096), labels=LABELS)
            worker.add_queue(queue)
            loop = asyncio.get_running_loop()
            requests = []
            for ids, priority in mix:  # all queued before the worker starts: both form the same batches
                request = InferenceRequest(len(ids), loop)
                worker.submit(queue, request, ids, priority=priority)
                requests.append(request)
            worker.start()
            try:
                await asyncio.wait_for(asyncio.gather(*(request.future for request in requests)), 30)
            finally:
                worker.stop(10)
            answers[pipeline] = [request.outputs for request in requests]
        for serial, pipelined in zip(answers[False], answers[True], strict=True):
            np.testing.assert_array_equal(serial, pipelined)
        # The staged forward pass is the runner's own, operation for operation.
        ids = mix[3][0]
        stages = TorchStages(runner)  # type: ignore[arg-type]
        staged, seconds = stages.launch(stages.prepare(ids)).collect()
        np.testing.assert_array_equal(staged, runner.forward(ids))
        assert seconds > 0
    finally:
        engine.close()


async def test_engine_serves_with_the_pipeline_on(demo_catalogue: Path) -> None:
    engine = Engine(
        load_catalogue(demo_catalogue, ["xlmr-mnli"]), tokenization_workers=1, torch_threads=1, worker_pipeline=True
    )
    engine.load()
    try:
        runtime = engine.variants["xlmr-mnli"]
        assert runtime.worker is not None
        assert runtime.worker.pipeline
        started = time.perf_counter()
        result = await engine.predict([("A dog sleeps.", "An animal rests.")] * 3, "xlmr-mnli")
        assert result.probabilities.shape == (3, 3)
        assert 0 < result.timings.inference_s <= time.perf_counter() - started
        np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    finally:
        engine.close()


class FakeMarker:
    def __init__(self, journal: list[str], number: int) -> None:
        self.journal = journal
        self.number = number

    def synchronize(self) -> None:
        self.journal.append(f"wait {self.number}")


def test_a_paced_yield_point_keeps_one_block_queued_ahead_of_what_it_launches() -> None:
    """On CUDA the hooks fire when blocks are queued: before yielding, the host waits until only the last block
    queued is still ahead (so an interactive batch launched there waits for one block, and the device never idles)."""
    journal: list[str] = []
    markers = iter(range(1, 100))
    paced: PacedYieldPoint
    inside = False

    def yield_point() -> None:  # as the worker's: returns at once when called from inside itself
        nonlocal inside
        journal.append("yield")
        if not inside:
            inside = True
            paced()  # a forward pass launched inside triggers the hooks again: not paced, no marker
            inside = False

    def mark() -> FakeMarker:
        number = next(markers)
        journal.append(f"mark {number}")
        return FakeMarker(journal, number)

    paced = PacedYieldPoint(yield_point, mark)
    for _ in range(3):  # before blocks 1, 2, 3
        paced()
    assert journal == [
        "mark 1",
        "yield",
        "yield",
        "mark 2",
        "wait 1",  # block 1 done; block 2 may still run
        "yield",
        "yield",
        "mark 3",
        "wait 2",
        "yield",
        "yield",
    ]


def test_yield_points_are_paced_on_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    journal: list[str] = []

    class Event:
        def record(self, stream: object) -> None:
            journal.append(f"record on {stream}")

        def synchronize(self) -> None:
            journal.append("synchronize")

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: f"stream of {device}")

    def yield_point() -> None:
        journal.append("yield")

    assert device_yield_point(yield_point, torch.device("cpu")) is yield_point
    paced = device_yield_point(yield_point, torch.device("cuda:0"))
    paced()
    paced()
    assert journal == ["record on stream of cuda:0", "yield", "record on stream of cuda:0", "synchronize", "yield"]


async def test_a_yield_point_keeps_the_estimates_of_the_batches_it_launched() -> None:
    """With the pipeline on, the interactive batches launched at a yield point are still in flight when it returns:
    the device stays busy for them and for the rest of the background batch."""
    worker = DeviceWorker("test", pipeline=True)  # not started: nothing lands
    queue = VariantQueue("a", StagedRunner(), BatchLimits(1, 100_000), seconds_per_pair=1.0, labels=LABELS)
    worker.add_queue(queue)
    outer = Flight(queue, [], Priority.BATCH, 0)
    outer.estimate_s = 3.0
    with worker.admission.condition:
        worker._in_flight_s = outer.estimate_s
        worker.admission.busy_until = time.perf_counter() + outer.estimate_s
    worker._current = outer
    submit(worker, queue, [1])
    worker._preempt()
    assert len(outer.nested) == 1
    assert worker._in_flight_s == pytest.approx(4.0)
    assert worker.admission.busy_until - time.perf_counter() == pytest.approx(4.0, abs=0.2)


@pytest.mark.parametrize("pipeline", [True, False])
async def test_a_request_whose_event_loop_closed_takes_nothing_down(pipeline: bool) -> None:
    """At shutdown a request's event loop may be closed before its answer: answering it raises, and neither the
    thread that answers nor the worker may die or hang, nor may the other requests of its batch fail."""
    worker = DeviceWorker("test", pipeline=pipeline)
    runner = StagedRunner()
    runner.fail_in = {"collect": {3}}
    queue = add_queue(worker, runner, max_batch_size=2)
    closed = asyncio.new_event_loop()
    closed.close()
    orphans = [InferenceRequest(1, closed) for _ in range(2)]
    worker.submit(queue, orphans[0], [[1, 5, 6]])  # answered: the loop refuses the answer
    alive = submit(worker, queue, [2])  # same batch
    worker.submit(queue, orphans[1], [[3, 5, 6]])  # failed: the loop refuses the failure
    later = submit(worker, queue, [4])  # same batch, fails with it
    last = submit(worker, queue, [5])
    worker.start()
    try:
        results = await asyncio.wait_for(
            asyncio.gather(alive.future, later.future, last.future, return_exceptions=True), 5
        )
        assert results[0] is None
        assert results[2] is None
        assert isinstance(results[1], InferenceError)
        assert [alive.outputs[0, 0], last.outputs[0, 0]] == [2, 5]
        assert worker.alive
    finally:
        worker.stop(5)


def test_the_post_stage_goes_on_when_handling_a_fault_fails() -> None:
    finished: list[int] = []

    def finish(flight: Flight) -> None:
        if flight.batch_id == 1:
            raise RuntimeError("answering failed")
        finished.append(flight.batch_id)

    def fatal(flight: Flight, error: BaseException) -> None:
        raise RuntimeError("and so did failing its requests")

    post = PostStage("test", finish, fatal, depth=1)
    post.start()
    queue = VariantQueue("a", StagedRunner(), BatchLimits(1, 100_000), labels=LABELS)
    for batch_id in (1, 2):
        post.reserve()  # the second waits for the slot the first flight gives back
        flight = Flight(queue, [], Priority.INTERACTIVE, batch_id)
        flight.holds_slot = True
        post.put(flight)
    post.close()
    assert finished == [2]
