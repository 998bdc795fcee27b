"""A batch's stages on the device worker: prepare (collate; on CUDA the pinned, non-blocking host-to-device copy on a
copy stream), launch (the forward pass: queued on the compute stream on CUDA, run to the end elsewhere) and collect
(wait for the device, probabilities on the host, and the device seconds the batch took).

Splitting ``forward`` this way lets the device worker prepare batch N+1 and hand batch N-1's results back while
batch N runs (see ``app.engine.worker``). A runner may stage itself (``prepare`` and ``launch``); torch runners are
staged here; any other runner (ONNX Runtime, fault injection) runs whole at launch and is collected at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt
import torch

from app.engine.backends.torch import TorchRunner, yield_modules
from app.engine.padding import collate
from app.engine.runner import BatchRunner

YieldPoint = Callable[[], None]


class Launched(Protocol):
    """A batch whose forward pass was launched. ``device_timed``: its seconds are the device's own (CUDA events),
    so work the worker ran inside its yield points is subtracted by the worker from the nested batches' seconds,
    not from the host's clock."""

    device_timed: bool

    def collect(self) -> tuple[npt.NDArray[np.float32], float]:
        """Wait for the device; (probabilities in service label order, device seconds of the batch)."""
        ...


class Stages(Protocol):
    preemptible: bool

    def prepare(self, sequences: Sequence[Sequence[int]]) -> Any: ...

    def launch(self, prepared: Any, yield_point: YieldPoint | None = None) -> Launched: ...


class Done:
    """A launch that already ran to the end on the host's clock."""

    device_timed = False

    def __init__(self, probabilities: npt.NDArray[np.float32], seconds: float) -> None:
        self._result = (probabilities, seconds)

    def collect(self) -> tuple[npt.NDArray[np.float32], float]:
        return self._result


class WholeForward:
    """Any runner: nothing to prepare, the whole forward pass at launch (between layers where it can pause)."""

    def __init__(self, runner: BatchRunner) -> None:
        self.runner = runner
        self.preemptible = hasattr(runner, "forward_preemptible")

    def prepare(self, sequences: Sequence[Sequence[int]]) -> Sequence[Sequence[int]]:
        return sequences

    def launch(self, prepared: Sequence[Sequence[int]], yield_point: YieldPoint | None = None) -> Done:
        started = time.perf_counter()
        if yield_point is not None and self.preemptible:
            probabilities: npt.NDArray[np.float32] = self.runner.forward_preemptible(  # type: ignore[attr-defined]
                prepared, yield_point
            )
        else:
            probabilities = self.runner.forward(prepared)
        return Done(probabilities, time.perf_counter() - started)


class _OnDevice:
    __slots__ = ("attention_mask", "input_ids", "ready")

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, ready: torch.cuda.Event | None) -> None:
        self.input_ids = input_ids
        self.attention_mask = attention_mask
        self.ready = ready  # recorded on the copy stream once both tensors are on the device


class _CudaLaunch:
    """Kernels queued on the compute stream, the result copied into pinned host memory behind them."""

    device_timed = True

    def __init__(self, host: torch.Tensor, started: torch.cuda.Event, ended: torch.cuda.Event) -> None:
        self._host = host
        self._started = started
        self._ended = ended

    def collect(self) -> tuple[npt.NDArray[np.float32], float]:
        self._ended.synchronize()
        probabilities: npt.NDArray[np.float32] = self._host.numpy()
        return probabilities, self._started.elapsed_time(self._ended) / 1000.0


class TorchStages:
    """A TorchRunner's forward pass in stages; on CPU the same operations in the same order as ``forward``, so
    results are identical whichever way a batch ran."""

    preemptible = True

    def __init__(self, runner: TorchRunner, copy_stream: torch.cuda.Stream | None = None) -> None:
        self.runner = runner
        self._cuda = runner.device.type == "cuda"
        self._copy_stream = copy_stream if self._cuda else None
        self._permutation = runner._permutation

    def prepare(self, sequences: Sequence[Sequence[int]]) -> _OnDevice:
        input_ids, attention_mask = collate(sequences, self.runner.pad_token_id)
        if not self._cuda:
            return _OnDevice(torch.from_numpy(input_ids), torch.from_numpy(attention_mask), None)
        device = self.runner.device
        with torch.cuda.stream(self._copy_stream):  # None: the current stream (no overlap, still correct)
            ids = torch.from_numpy(input_ids).pin_memory().to(device, non_blocking=True)
            mask = torch.from_numpy(attention_mask).pin_memory().to(device, non_blocking=True)
            ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ready.record()
        return _OnDevice(ids, mask, ready)

    @torch.inference_mode()
    def launch(self, prepared: _OnDevice, yield_point: YieldPoint | None = None) -> Launched:
        model = self.runner.model
        handles = []
        if yield_point is not None:
            pause = yield_point
            handles = [block.register_forward_pre_hook(lambda *_: pause()) for block in yield_modules(model)]
        try:
            if not self._cuda:
                started = time.perf_counter()
                probabilities = self._probabilities(prepared)
                return Done(probabilities.numpy(), time.perf_counter() - started)
            stream = torch.cuda.current_stream(self.runner.device)
            if prepared.ready is not None:
                stream.wait_event(prepared.ready)
            # Made on the copy stream, used on this one: keep the allocator from reusing them before it is done.
            prepared.input_ids.record_stream(stream)
            prepared.attention_mask.record_stream(stream)
            began = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            ended = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            began.record(stream)
            probabilities = self._probabilities(prepared)
            host = torch.empty(probabilities.shape, dtype=probabilities.dtype, pin_memory=True)
            host.copy_(probabilities, non_blocking=True)
            ended.record(stream)
            return _CudaLaunch(host, began, ended)
        finally:
            for handle in handles:
                handle.remove()

    def _probabilities(self, prepared: _OnDevice) -> torch.Tensor:
        logits = self.runner.model(input_ids=prepared.input_ids, attention_mask=prepared.attention_mask).logits
        return torch.softmax(logits.float(), dim=-1).index_select(1, self._permutation)


def stages_for(runner: BatchRunner, copy_stream: torch.cuda.Stream | None = None) -> Stages:
    """The stages of ``runner``'s forward pass: its own when it has them (``prepare`` and ``launch``), split here for
    a torch runner, whole otherwise."""
    if hasattr(runner, "prepare") and hasattr(runner, "launch"):
        return cast(Stages, runner)
    if isinstance(runner, TorchRunner):
        return TorchStages(runner, copy_stream)
    return WholeForward(runner)
