"""What the engine says about its variants: status, repository entries and a variant's runtime (what loading found,
what it serves with, its description for ``/variants``, and admission to its queue)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any

from app.engine.contract import Priority
from app.engine.models.catalogue import VariantSpec
from app.engine.models.store import CheckpointInfo, dtype_name
from app.engine.scheduler.admission import Reservation
from app.engine.scheduler.queues import VariantQueue
from app.engine.scheduler.requests import InferenceRequest
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

    def admit(self, count: int, deadline: float, priority: Priority) -> Admission:
        """Room for ``count`` client pairs in this variant's queue, or the refusal (OverloadedError,
        RequestTooLargeError, DeadlineTooShortError), before the pairs are tokenized."""
        worker, queue = self.worker, self.queue
        assert worker is not None
        assert queue is not None
        return Admission(worker, queue, worker.admit(queue, count, deadline, priority), priority)

    def admit_shadow(self, count: int, max_pairs: int, max_client_backlog_s: float) -> Admission:
        """Room for ``count`` shadow pairs, or ShadowRefused: the shadow lane is full or client work is queued on the
        device beyond ``max_client_backlog_s``."""
        worker, queue = self.worker, self.queue
        assert worker is not None
        assert queue is not None
        reservation = worker.admit_shadow(queue, count, max_pairs, max_client_backlog_s)
        return Admission(worker, queue, reservation, Priority.SHADOW, max_pairs, max_client_backlog_s)

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


class Admission:
    """An admitted request's room in its variant's queue, held while its pairs are tokenized: ``submit`` queues them
    (checked again, since tokenizing took some of the request's time), ``release`` gives the room back if the request
    fails or goes away first (a no-op after ``submit``). Used as a context manager, it releases on the way out.

    The facade and the shadows hold this, never the device worker, the queue or the reservation it wraps."""

    __slots__ = ("_max_client_backlog_s", "_max_shadow_pairs", "_priority", "_queue", "_reservation", "_worker")

    def __init__(
        self,
        worker: DeviceWorker,
        queue: VariantQueue,
        reservation: Reservation,
        priority: Priority,
        max_shadow_pairs: int = 1_000_000,
        max_client_backlog_s: float = math.inf,
    ) -> None:
        self._worker = worker
        self._queue = queue
        self._reservation = reservation
        self._priority = priority
        self._max_shadow_pairs = max_shadow_pairs
        self._max_client_backlog_s = max_client_backlog_s

    def submit(self, request: InferenceRequest, sequences: Sequence[list[int]]) -> None:
        """Queue the request's tokenized pairs in its lane (raises as admission does when they no longer fit)."""
        self._worker.submit(
            self._queue,
            request,
            sequences,
            self._reservation,
            self._priority,
            max_shadow_pairs=self._max_shadow_pairs,
            max_client_backlog_s=self._max_client_backlog_s,
        )

    def release(self) -> None:
        self._worker.release(self._reservation)

    def __enter__(self) -> Admission:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._worker.release(self._reservation)
