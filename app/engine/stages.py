"""A batch's stages on the device worker: prepare (collate; on CUDA the pinned, non-blocking host-to-device copy on a
copy stream), launch (the forward pass: queued on the compute stream on CUDA, run to the end elsewhere) and collect
(wait for the device, probabilities on the host, and the device seconds the batch took).

Splitting ``forward`` this way lets the device worker prepare batch N+1 and hand batch N-1's results back while
batch N runs (see ``app.engine.worker``). A runner may stage itself (``prepare`` and ``launch``, returning ``Done``
or ``Queued``); torch runners are staged by ``app.engine.torch_stages``; any other runner (ONNX Runtime, fault
injection) runs whole at launch (``WholeForward``) and is collected at once. Backend-free, so runners can use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

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
    """``preemptible``: launch calls its ``yield_point`` between encoder blocks (a runner that stages itself may
    leave it out: not preemptible)."""

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


class Queued:
    """Kernels queued on a CUDA stream, the result copied into pinned host memory behind them, between two timing
    events recorded on that stream."""

    device_timed = True

    def __init__(self, host: torch.Tensor, began: torch.cuda.Event, ended: torch.cuda.Event) -> None:
        self._host = host
        self._began = began
        self._ended = ended

    def collect(self) -> tuple[npt.NDArray[np.float32], float]:
        self._ended.synchronize()
        probabilities: npt.NDArray[np.float32] = self._host.numpy()
        return probabilities, self._began.elapsed_time(self._ended) / 1000.0
