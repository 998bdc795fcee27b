"""What the engine says about its variants and answers: status, repository entries, results and a variant's runtime
(what loading found, what it serves with, and its description for ``/variants``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from app.engine.models.catalogue import VariantSpec
from app.engine.models.store import CheckpointInfo, dtype_name
from app.engine.scheduler.queues import VariantQueue
from app.engine.scheduler.worker import DeviceWorker
from app.engine.tokenization import PairEncoder


class VariantStatus(StrEnum):
    PENDING = "pending"
    LOADING = "loading"
    WARMING_UP = "warming_up"
    READY = "ready"
    FAILED = "failed"
    DISABLED = "disabled"
    UNLOADING = "unloading"  # replaced or unloaded: admits nothing, finishes what it accepted
    UNLOADED = "unloaded"


class RepositoryState(StrEnum):
    """A variant's state in the model repository index (the Open Inference Protocol's names)."""

    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"


@dataclass(frozen=True, slots=True)
class RepositoryEntry:
    name: str
    state: RepositoryState
    reason: str


@dataclass(frozen=True, slots=True)
class Timings:
    tokenization_s: float
    queue_s: float
    inference_s: float
    total_s: float


@dataclass(frozen=True, slots=True)
class PredictionResult:
    variant: str
    probabilities: npt.NDArray[np.float32]
    truncated: list[bool]
    timings: Timings


@dataclass
class VariantRuntime:
    spec: VariantSpec
    status: VariantStatus = VariantStatus.PENDING
    error: str | None = None
    info: CheckpointInfo | None = None
    encoder: PairEncoder | None = None
    queue: VariantQueue | None = None
    worker: DeviceWorker | None = None
    parameters: int | None = None
    attention: str | None = None
    execution: dict[str, Any] = field(default_factory=dict)
    guard: dict[str, Any] | None = None
    warmup: dict[str, Any] = field(default_factory=dict)
    active: int = 0  # requests inside the engine that resolved to this runtime (an unload waits for them)
    info_labels: tuple[str, ...] | None = None  # its xnli_variant_info labels while it serves
    drained: asyncio.Event | None = None  # made when it is retired; set once ``active`` falls to 0

    def describe(self) -> dict[str, Any]:
        """Catalogue metadata plus what loading found; what `/variants` shows."""
        spec = self.spec
        info = self.info
        demo = info.demo if info else None
        return {
            "name": spec.name,
            "base_model": spec.base_model,
            "intermediate_task": spec.intermediate_task,
            "description": spec.description,
            "path": str(spec.path),
            "enabled": spec.enabled,
            "status": str(self.status),
            "error": self.error,
            "device": str(info.device) if info else spec.device,
            "dtype": dtype_name(info.dtype) if info else spec.dtype,
            "backend": spec.backend,
            "quantization": spec.quantization,
            "execution": self.execution,
            "accuracy_guard": self.guard,
            "parameters": self.parameters,
            "attention": self.attention,
            "max_batch_size": spec.max_batch_size,
            "max_batch_tokens": spec.max_batch_tokens,
            "max_seq_len": spec.max_seq_len,
            "max_wait_ms": spec.max_wait_ms,
            "demo": demo is not None,
            "untrained": bool(demo and demo.get("untrained")),
            "warmup": self.warmup,
        }
