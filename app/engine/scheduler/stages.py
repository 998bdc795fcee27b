"""A batch's stages on the device worker: prepare (collate; on CUDA the pinned, non-blocking host-to-device copy on a
copy stream), launch (the forward pass: queued on the compute stream on CUDA, run to the end elsewhere) and collect
(wait for the device, probabilities on the host, and the device seconds the batch took).

Splitting ``forward`` this way lets the device worker prepare batch N+1 and hand batch N-1's results back while
batch N runs (see ``worker``). A runner may stage itself (``prepare`` and ``launch``, returning ``Done`` or
``Queued``); a backend may stage its runners (``Backend.stages``: torch's are staged by
``app.engine.backends.torch_stages``); any other runner (ONNX Runtime, fault injection) runs whole at launch
(``WholeForward``) and is collected at once. Torch-free (torch types only for type checking), so runners of any
backend can use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
import numpy.typing as npt

from app.engine.scheduler.runner import BatchRunner

if TYPE_CHECKING:
    import torch

YieldPoint = Callable[[], None]


class Marker(Protocol):
    """A point in a device's queue of work (a CUDA event recorded on the stream)."""

    def synchronize(self) -> None:
        """Wait until the device has run everything queued before this point."""
        ...


class PacedYieldPoint:
    """A yield point for a device that runs queued work asynchronously (CUDA): before each block is queued, wait
    until the device has finished every block but the last one queued, then yield.

    The host otherwise queues a whole background batch long before the device runs it, and an interactive batch
    launched at a yield point would wait behind all of it. Here at most one block of background work is queued ahead
    of it, and the device does not idle between blocks: it runs block k-1 while the host queues block k. The cost:
    the host waits on the device once per block of a background batch (interactive batches are not paced).

    ``mark`` records a ``Marker`` at the current end of the device's queue. Calls made while ``yield_point`` runs
    (the forward passes it launches trigger the same hooks) go straight to it, unpaced.
    """

    def __init__(self, yield_point: YieldPoint, mark: Callable[[], Marker]) -> None:
        self._yield_point = yield_point
        self._mark = mark
        self._previous: Marker | None = None  # the end of the blocks queued before the last one
        self._inside = False

    def __call__(self) -> None:
        if self._inside:
            self._yield_point()
            return
        marker = self._mark()  # the end of the blocks queued so far
        if self._previous is not None:
            self._previous.synchronize()  # only the last block queued may still be ahead
        self._previous = marker
        self._inside = True
        try:
            self._yield_point()
        finally:
            self._inside = False


def _stream_marker(device: torch.device) -> torch.cuda.Event:
    import torch  # only ever called for a CUDA device, where torch is loaded already

    event = torch.cuda.Event()  # type: ignore[no-untyped-call]
    event.record(torch.cuda.current_stream(device))
    return event


def device_yield_point(yield_point: YieldPoint, device: torch.device) -> YieldPoint:
    """The yield point to hook before each encoder block on ``device``: as is where the forward pass runs as it is
    called (CPU), paced on CUDA (``PacedYieldPoint``: at most one block of background work queued ahead of an
    interactive batch launched there)."""
    if device.type != "cuda":
        return yield_point
    return PacedYieldPoint(yield_point, lambda: _stream_marker(device))


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


StageFactory = Callable[[BatchRunner, "torch.cuda.Stream | None"], Stages]
"""How a variant's backend splits its runner's forward pass (``Backend.stages``), given the device worker's copy
stream; the worker asks it for every batch and imports no backend."""


def own_stages(runner: BatchRunner, copy_stream: torch.cuda.Stream | None = None) -> Stages:
    """The stages of a runner that stages itself (``prepare`` and ``launch``), else its whole forward pass."""
    if hasattr(runner, "prepare") and hasattr(runner, "launch"):
        return cast(Stages, runner)
    return WholeForward(runner)


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
