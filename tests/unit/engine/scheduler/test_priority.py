"""Priority lanes of the batcher: interactive before batch before shadow, short background batches, separate
admission, shadows dropped first."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.engine.contract import Priority
from app.engine.errors import OverloadedError
from app.engine.scheduler.batching import BatchLimits
from app.engine.scheduler.queues import VariantQueue
from app.engine.scheduler.requests import InferenceRequest, ShadowRefused
from app.engine.scheduler.worker import DeviceWorker
from app.engine.tasks.nli import LABELS
from tests.support.helpers import metric_value
from tests.unit.engine.scheduler.test_worker import RecordingRunner


def add_queue(
    worker: DeviceWorker,
    runner: RecordingRunner,
    max_batch_size: int = 32,
    max_queue_pairs: int = 1_000,
    max_background_batch_s: float = math.inf,
) -> VariantQueue:
    queue = VariantQueue(
        runner.name,
        runner,
        BatchLimits(max_batch_size, 100_000),
        max_queue_pairs=max_queue_pairs,
        max_background_batch_s=max_background_batch_s,
        labels=LABELS,
    )
    worker.add_queue(queue)
    return queue


def submit(
    worker: DeviceWorker, queue: VariantQueue, first_tokens: Sequence[int], priority: Priority
) -> InferenceRequest:
    request = InferenceRequest(len(first_tokens), asyncio.get_running_loop(), time.perf_counter() + 30)
    worker.submit(queue, request, [[token, 5, 6] for token in first_tokens], None, priority)
    return request


async def test_interactive_pairs_run_before_batch_pairs_before_shadow_pairs(worker: DeviceWorker) -> None:
    """Work queued in the opposite order runs interactive first: batch and shadow work only fills spare time."""
    journal: list[tuple[str, int]] = []
    gate = threading.Event()
    runner = RecordingRunner("a", journal, gate)
    queue = add_queue(worker, runner, max_batch_size=4)
    worker.start()
    blocker = submit(worker, queue, [0], Priority.INTERACTIVE)
    await asyncio.sleep(0.05)  # the worker is inside the gated first batch
    shadow = submit(worker, queue, [30, 31, 32, 33], Priority.SHADOW)
    batch = submit(worker, queue, [20, 21, 22, 23], Priority.BATCH)
    interactive = [submit(worker, queue, [10 + index], Priority.INTERACTIVE) for index in range(4)]
    gate.set()
    await asyncio.wait_for(
        asyncio.gather(blocker.future, shadow.future, batch.future, *(r.future for r in interactive)), 5
    )
    assert runner.computed == [0, 10, 11, 12, 13, 20, 21, 22, 23, 30, 31, 32, 33]


async def test_a_steady_interactive_stream_goes_first_on_every_variant_of_the_device(worker: DeviceWorker) -> None:
    """Priority holds across the variants sharing a device: b's batch work waits for a's interactive work."""
    journal: list[tuple[str, int]] = []
    gate = threading.Event()
    queue_a = add_queue(worker, RecordingRunner("a", journal, gate), max_batch_size=2)
    queue_b = add_queue(worker, RecordingRunner("b", journal), max_batch_size=2)
    worker.start()
    first = submit(worker, queue_a, [0], Priority.INTERACTIVE)
    await asyncio.sleep(0.05)
    background = submit(worker, queue_b, list(range(4)), Priority.BATCH)
    foreground = submit(worker, queue_a, list(range(1, 7)), Priority.INTERACTIVE)
    gate.set()
    await asyncio.wait_for(asyncio.gather(first.future, background.future, foreground.future), 5)
    assert journal == [("a", 1), ("a", 2), ("a", 2), ("a", 2), ("b", 2), ("b", 2)]


async def test_background_batches_are_cut_to_their_time_budget(worker: DeviceWorker) -> None:
    """At 10 ms per pair and a 25 ms budget a batch-priority batch carries 2 pairs; interactive ones stay full."""
    journal: list[tuple[str, int]] = []
    runner = RecordingRunner("a", journal)
    queue = add_queue(worker, runner, max_batch_size=8, max_background_batch_s=0.025)
    queue.seconds_per_pair = 0.010
    background = submit(worker, queue, list(range(6)), Priority.BATCH)
    foreground = submit(worker, queue, list(range(8)), Priority.INTERACTIVE)
    queue.record_batch = lambda *args: None  # type: ignore[method-assign]  # keep the 10 ms estimate
    worker.start()
    await asyncio.wait_for(asyncio.gather(background.future, foreground.future), 5)
    assert journal == [("a", 8), ("a", 2), ("a", 2), ("a", 2)]


def test_interactive_admission_ignores_queued_background_work(worker: DeviceWorker) -> None:
    """9 s of batch work (and 10 s of shadow work) is queued; an interactive request with a 1 s deadline is still
    admitted (it runs first), a batch request is refused (it would wait behind the batch work), and each lane has its
    own max_queue_pairs."""
    queue = add_queue(worker, RecordingRunner("a", []), max_queue_pairs=100)
    queue.seconds_per_pair = 0.1
    queue.lanes[Priority.BATCH].reserved_pairs = 90
    queue.lanes[Priority.SHADOW].reserved_pairs = 100
    worker.admit(queue, 5, time.perf_counter() + 1.0, Priority.INTERACTIVE)
    with pytest.raises(OverloadedError, match="cannot answer within the deadline"):
        worker.admit(queue, 5, time.perf_counter() + 1.0, Priority.BATCH)
    with pytest.raises(OverloadedError, match="batch queue is full"):
        worker.admit(queue, 11, time.perf_counter() + 3600, Priority.BATCH)
    worker.admit(queue, 95, time.perf_counter() + 3600, Priority.INTERACTIVE)
    with pytest.raises(OverloadedError, match="interactive queue is full"):
        worker.admit(queue, 1, time.perf_counter() + 3600, Priority.INTERACTIVE)


def test_a_running_background_batch_that_yields_does_not_count_against_interactive_admission(
    worker: DeviceWorker,
) -> None:
    queue = add_queue(worker, RecordingRunner("a", []))
    queue.seconds_per_pair = 0.01
    worker.admission.busy_until = time.perf_counter() + 5.0  # a 5 s background batch is running ...
    worker.admission.yielding = True  # ... and pauses between layers for interactive batches
    worker.admit(queue, 1, time.perf_counter() + 1.0, Priority.INTERACTIVE)
    with pytest.raises(OverloadedError, match="cannot answer within the deadline"):
        worker.admit(queue, 1, time.perf_counter() + 1.0, Priority.BATCH)
    worker.admission.yielding = False  # a batch that runs whole (ONNX Runtime) is waited for
    with pytest.raises(OverloadedError, match="cannot answer within the deadline"):
        worker.admit(queue, 1, time.perf_counter() + 1.0, Priority.INTERACTIVE)


def test_shadows_are_refused_when_client_work_is_queued_or_their_lane_is_full(worker: DeviceWorker) -> None:
    queue = add_queue(worker, RecordingRunner("a", []))
    queue.seconds_per_pair = 0.01
    worker.admit_shadow(queue, 8, max_pairs=10, max_client_backlog_s=0.1)
    with pytest.raises(ShadowRefused, match="holds 8 pairs, at most 10") as full:
        worker.admit_shadow(queue, 3, max_pairs=10, max_client_backlog_s=0.1)
    assert full.value.reason == "queue_full"
    worker.admit(queue, 11, time.perf_counter() + 30, Priority.BATCH)  # 0.11 s of client work is queued
    with pytest.raises(ShadowRefused, match="client work is queued") as busy:
        worker.admit_shadow(queue, 1, max_pairs=10, max_client_backlog_s=0.1)
    assert busy.value.reason == "busy"


async def test_abandoned_shadows_give_their_room_back(worker: DeviceWorker) -> None:
    queue = add_queue(worker, RecordingRunner("a", []))
    stale = InferenceRequest(10, asyncio.get_running_loop(), time.perf_counter() + 30)
    worker.submit(queue, stale, [[1, 2]] * 10, None, Priority.SHADOW, max_shadow_pairs=10)
    stale.abandon("deadline")  # its shadow task gave up waiting; the worker never ran (not started)
    worker.admit_shadow(queue, 10, max_pairs=10, max_client_backlog_s=1.0)
    assert len(queue.lanes[Priority.SHADOW]) == 0


async def test_stopping_drops_queued_shadows_but_finishes_client_work(worker: DeviceWorker) -> None:
    journal: list[tuple[str, int]] = []
    gate = threading.Event()
    runner = RecordingRunner("a", journal, gate)
    queue = add_queue(worker, runner)
    worker.start()
    blocker = submit(worker, queue, [0], Priority.INTERACTIVE)
    await asyncio.sleep(0.05)  # the worker is inside the gated first batch
    shadow = submit(worker, queue, [1, 2], Priority.SHADOW)
    batch = submit(worker, queue, [3], Priority.BATCH)
    stopping = asyncio.create_task(asyncio.to_thread(worker.stop, 5))
    await asyncio.sleep(0.05)
    gate.set()
    await stopping
    await asyncio.wait_for(asyncio.gather(blocker.future, batch.future), 5)
    with pytest.raises(ShadowRefused, match="draining") as dropped:
        await asyncio.wait_for(shadow.future, 5)
    assert dropped.value.reason == "draining"
    assert runner.computed == [0, 3]
    with pytest.raises(ShadowRefused) as late:
        worker.admit_shadow(queue, 1, max_pairs=10, max_client_backlog_s=1.0)
    assert late.value.reason == "unavailable"


async def test_shadow_batches_stay_out_of_the_client_series(worker: DeviceWorker) -> None:
    """A candidate's inference histogram, batch sizes and prediction counts carry only client work."""
    from prometheus_client import REGISTRY, generate_latest

    runner = RecordingRunner("metrics-probe", [])
    queue = add_queue(worker, runner)
    worker.start()
    before = generate_latest(REGISTRY).decode()
    await asyncio.wait_for(submit(worker, queue, [1, 2, 3], Priority.SHADOW).future, 5)
    await asyncio.wait_for(submit(worker, queue, [4], Priority.INTERACTIVE).future, 5)
    await asyncio.sleep(0.05)  # record_batch runs after the answer
    after = generate_latest(REGISTRY).decode()

    def grew(name: str) -> float:
        return metric_value(after, name, variant="metrics-probe") - metric_value(before, name, variant="metrics-probe")

    assert grew("xnli_inference_duration_seconds_count") == 1
    assert grew("xnli_batch_size_sum") == 1
    assert grew("xnli_predictions_total") == 1
    assert grew("xnli_shadow_inference_duration_seconds_count") == 1
    assert grew("xnli_shadow_batch_size_sum") == 3


class LayeredRunner(RecordingRunner):
    """Calls the yield point between four "layers"; the second one waits until the test has queued more work."""

    def __init__(self, name: str, journal: list[tuple[str, int]]) -> None:
        super().__init__(name, journal)
        self.inside = threading.Event()
        self.resume = threading.Event()
        self.yields = 0

    def forward_preemptible(self, sequences: Sequence[Sequence[int]], yield_point: Callable[[], None]) -> Any:
        for layer in range(4):
            if layer == 1:
                self.inside.set()
                self.resume.wait(5)
            self.yields += 1
            yield_point()
        return self.forward(sequences)


async def test_a_background_batch_lets_interactive_batches_run_between_its_layers(worker: DeviceWorker) -> None:
    """The interactive request arrives while a batch-priority batch is in its first layer: it is computed at the
    next layer boundary, before the background batch ends, not after it."""
    journal: list[tuple[str, int]] = []
    runner = LayeredRunner("a", journal)
    queue = add_queue(worker, runner)
    worker.start()
    background = submit(worker, queue, [1, 2, 3], Priority.BATCH)
    assert await asyncio.to_thread(runner.inside.wait, 5)
    interactive = submit(worker, queue, [9], Priority.INTERACTIVE)
    runner.resume.set()
    await asyncio.wait_for(asyncio.gather(background.future, interactive.future), 5)
    assert journal == [("a", 1), ("a", 3)]  # the interactive forward pass ran inside the background one
    assert interactive.done_at < background.done_at
    assert runner.yields == 4  # the nested pass did not re-enter the yield point
    assert background.outputs[:, 0].tolist() == [1, 2, 3]
    assert interactive.outputs[0, 0] == 9


def test_the_torch_runner_yields_before_every_block_of_every_encoder_layer(demo_store: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from app.engine.backends.torch import TorchRunner
    from app.engine.backends.torch_stages import encoder_layers

    model = AutoModelForSequenceClassification.from_pretrained(demo_store / "xlmr-mnli").eval()
    runner = TorchRunner(model, torch.device("cpu"), model.config.pad_token_id, [0, 1, 2])
    calls: list[int] = []
    sequences = [[0, 100, 200, 2], [0, 300, 2]]
    preempted = runner.forward_preemptible(sequences, lambda: calls.append(len(calls)))
    blocks = 3 * model.config.num_hidden_layers  # attention, intermediate, output
    assert len(encoder_layers(model)) == model.config.num_hidden_layers
    assert len(calls) == blocks
    np.testing.assert_array_equal(preempted, runner.forward(sequences))  # the hooks are gone and change nothing
    assert len(calls) == blocks
