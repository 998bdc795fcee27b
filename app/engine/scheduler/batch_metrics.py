"""Per-variant series observed for every batch the device worker ran: duration, size, padding, predicted labels.

Client lanes (interactive, batch) feed the variant's xnli_* series; the shadow lane feeds only xnli_shadow_*
series, so a candidate's own latency and prediction counts never mix in shadow work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from app import metrics
from app.engine.contract import Priority
from app.engine.scheduler.padding import padded_length
from app.engine.scheduler.requests import PendingPair

if TYPE_CHECKING:
    from prometheus_client import Counter


class BatchMetrics:
    """The label children of one variant, looked up once (``labels()`` takes a lock and a dict lookup per call)."""

    def __init__(self, name: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.labels = labels  # the `label` of a prediction counted under its column's index
        self._inference = metrics.INFERENCE_DURATION.labels(name)
        self._batch_size = metrics.BATCH_SIZE.labels(name)
        self._batch_tokens = metrics.BATCH_TOKENS.labels(name)
        self._padding = metrics.BATCH_PADDING_RATIO.labels(name)
        self._real_tokens = metrics.COMPUTED_TOKENS.labels(name, "real")
        self._padding_tokens = metrics.COMPUTED_TOKENS.labels(name, "padding")
        self._predictions: dict[tuple[str, int], Counter] = {}
        self._shadow_inference = metrics.SHADOW_INFERENCE_DURATION.labels(name)
        self._shadow_batch_size = metrics.SHADOW_BATCH_SIZE.labels(name)

    def observe(
        self,
        pairs: Sequence[PendingPair],
        elapsed: float,
        probabilities: npt.NDArray[np.float32],
        priority: Priority = Priority.INTERACTIVE,
    ) -> None:
        """One batch of ``pairs`` that took ``elapsed`` seconds of device time and answered ``probabilities``."""
        if priority is Priority.SHADOW:
            self._shadow_inference.observe(elapsed)
            self._shadow_batch_size.observe(len(pairs))
            return
        real_tokens = sum(pair.length for pair in pairs)
        padded_tokens = len(pairs) * padded_length(max(pair.length for pair in pairs))
        self._inference.observe(elapsed)
        self._batch_size.observe(len(pairs))
        self._batch_tokens.observe(padded_tokens)
        self._padding.observe(1.0 - real_tokens / padded_tokens)
        self._real_tokens.inc(real_tokens)
        self._padding_tokens.inc(padded_tokens - real_tokens)
        counts: dict[tuple[str, int], int] = {}
        for pair, label_index in zip(pairs, probabilities.argmax(axis=1).tolist(), strict=True):
            key = (pair.request.language, label_index)
            counts[key] = counts.get(key, 0) + 1
        for key, count in counts.items():
            counter = self._predictions.get(key)
            if counter is None:
                counter = self._predictions[key] = metrics.PREDICTIONS.labels(self.name, self.labels[key[1]], key[0])
            counter.inc(count)
