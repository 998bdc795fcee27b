"""What the batcher and the engine need from a backend's runner: token sequences in, label probabilities out.

Torch-free: each backend's runner lives in its module under ``app.engine.backends`` (``TorchRunner`` in
``app.engine.backends.torch``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "BatchRunner",
    "PreemptibleRunner",
    "WarmableRunner",
    "logits_of",
    "probabilities_of",
    "warm_up_inputs",
]


class BatchRunner(Protocol):
    """What the batcher needs from a backend: token sequences in, (n, 2 * labels) rows out, probabilities then logits,
    both in service order (``Task.scores``; issue #26)."""

    def forward(self, sequences: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]: ...


class PreemptibleRunner(BatchRunner, Protocol):
    """A backend that calls ``yield_point`` between the layers of a forward pass, where the device worker may run
    more urgent batches before the rest of this one."""

    def forward_preemptible(
        self, sequences: Sequence[Sequence[int]], yield_point: Callable[[], None]
    ) -> npt.NDArray[np.float32]: ...


class WarmableRunner(BatchRunner, Protocol):
    """A backend the engine loads: it can also run a full-size dummy batch before traffic arrives."""

    def warm_up(self, rows: int, width: int) -> None: ...


def warm_up_inputs(rows: int, width: int, pad_token_id: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """A full (rows, width) batch of non-pad tokens: the most work a batch of that shape can ask for."""
    filler = 0 if pad_token_id != 0 else 1
    return np.full((rows, width), filler, dtype=np.int64), np.ones((rows, width), dtype=np.int64)


# --- issue #26: a runner's output rows carry the logits beside the probabilities -------------------------------------


def probabilities_of(outputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The probabilities of a runner's output rows ``[probabilities | logits]`` (a view: no copy on the hot path)."""
    return outputs[:, : outputs.shape[1] // 2]


def logits_of(outputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The logits (float32, service label order) of a runner's output rows ``[probabilities | logits]`` (a view)."""
    return outputs[:, outputs.shape[1] // 2 :]
