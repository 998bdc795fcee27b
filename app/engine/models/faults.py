"""Fault injection at the runner boundary: proves that a failing model fails only its own requests.

Enabled only when the operator opts in (``XNLI_SERVE_ENABLE_FAULT_INJECTION``) and a catalogue variant declares
``[variant.faults]``; nothing of it runs otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from app.engine.models.catalogue import FaultSpec
from app.engine.scheduler.requests import WorkerKilled
from app.engine.scheduler.runner import BatchRunner


class InjectedFault(RuntimeError):
    pass


class FaultInjectingRunner:
    def __init__(self, inner: BatchRunner, faults: FaultSpec) -> None:
        self.inner = inner
        self.faults = faults
        self.calls = 0

    def forward(self, sequences: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        self.calls += 1
        faults = self.faults
        if faults.delay_ms:
            time.sleep(faults.delay_ms / 1000.0)
        if faults.kill_after and self.calls >= faults.kill_after:
            raise WorkerKilled(f"injected fatal fault on forward pass {self.calls}")
        if faults.fail_every and self.calls % faults.fail_every == 0:
            raise InjectedFault(f"injected fault on forward pass {self.calls}")
        if faults.oom_above and len(sequences) > faults.oom_above:
            raise InjectedFault(f"CUDA out of memory (injected: batch of {len(sequences)} > {faults.oom_above})")
        return self.inner.forward(sequences)
