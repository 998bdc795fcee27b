"""What the device worker carries: a caller's request and its pairs waiting in a lane."""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from app.tracing.spans import RequestTrace


class ShadowRefused(Exception):
    """Shadow work not taken: ``reason`` is the `reason` label of xnli_shadow_dropped_pairs_total."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class WorkerKilled(BaseException):
    """A fault that must take the device worker down (a device that became unusable), not just fail a batch."""


_NOT_QUEUED: npt.NDArray[np.float32] = np.empty((0, 0), dtype=np.float32)


class InferenceRequest:
    """One caller's pairs; answered when its last pair has been computed, whichever batches carried them."""

    __slots__ = (
        "_loop",
        "abandon_reason",
        "compute_s",
        "deadline",
        "done_at",
        "enqueued_at",
        "future",
        "language",
        "last_batch",
        "outputs",
        "remaining",
        "trace",
    )

    def __init__(
        self, size: int, loop: asyncio.AbstractEventLoop, deadline: float = math.inf, language: str = "unspecified"
    ) -> None:
        self._loop = loop
        self.language = language  # the `language` label its predictions are counted under
        self.future: asyncio.Future[None] = loop.create_future()
        # One row per pair, the runner's [probabilities | logits] (issue #26), twice as wide as the variant's labels:
        # allocated when its pairs are queued (``queue.put``).
        self.outputs: npt.NDArray[np.float32] = _NOT_QUEUED
        self.remaining = size
        self.deadline = deadline
        self.enqueued_at = 0.0
        self.done_at = 0.0
        self.compute_s = 0.0
        self.last_batch = -1
        self.abandon_reason: str | None = None
        self.trace: RequestTrace | None = None  # tracing (issue #27): set when the request is sampled

    def abandon(self, reason: str) -> None:
        """Nobody waits for the answer any more (deadline, disconnect, failure): its queued pairs are skipped."""
        if self.abandon_reason is None:
            self.abandon_reason = reason

    def complete(self, now: float) -> None:
        self.done_at = now
        self._loop.call_soon_threadsafe(_resolve, self.future)

    def fail(self, error: BaseException, reason: str = "failed") -> None:
        self.abandon(reason)
        self._loop.call_soon_threadsafe(_reject, self.future, error)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _reject(future: asyncio.Future[None], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class PendingPair:
    __slots__ = ("ids", "index", "length", "request")

    def __init__(self, request: InferenceRequest, index: int, ids: list[int]) -> None:
        self.request = request
        self.index = index
        self.ids = ids
        self.length = len(ids)
