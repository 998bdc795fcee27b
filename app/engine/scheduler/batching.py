"""Batch formation policy: which waiting pairs run together. Pure functions, so they are tested without threads."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from app.engine.scheduler.padding import padded_length


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_batch_size: int
    max_batch_tokens: int
    max_padding_ratio: float = 1.0  # 1.0 = no cap; lower keeps compute-bound devices (CPUs) from paying for padding

    @property
    def window(self) -> int:
        """How many of the oldest waiting pairs are considered for length grouping (Infinity looks at 8x)."""
        return self.max_batch_size * 8


def batch_cost(lengths: Sequence[int]) -> int:
    """Padded tokens a batch really computes: rows x the longest row rounded up to the pad multiple."""
    return len(lengths) * padded_length(max(lengths)) if lengths else 0


@dataclass(slots=True)
class _Batch:
    chosen: set[int]
    longest: int
    real: int


def _grow(batch: _Batch, candidates: list[int], lengths: Sequence[int], limits: BatchLimits) -> None:
    """Add candidates nearest in length to the batch, cheapest padding first, until a limit stops it."""
    rest = sorted(candidates, key=lambda position: (lengths[position], position))
    up = bisect.bisect_left([lengths[position] for position in rest], batch.longest)  # equal length, oldest first
    down = up - 1  # the longest shorter candidate
    while len(batch.chosen) < limits.max_batch_size:
        count = len(batch.chosen)
        options: list[tuple[int, int, int]] = []  # (added padding, arrival position, side)
        if down >= 0:
            options.append((batch.longest - lengths[rest[down]], rest[down], -1))
        if up < len(rest):
            options.append((count * (lengths[rest[up]] - batch.longest), rest[up], +1))
        for _, position, side in sorted(options):
            new_longest = max(batch.longest, lengths[position])
            cost = (count + 1) * padded_length(new_longest)
            padding = 1.0 - (batch.real + lengths[position]) / cost
            if cost <= limits.max_batch_tokens and padding <= limits.max_padding_ratio:
                if side < 0:
                    down -= 1
                else:
                    up += 1
                batch.chosen.add(position)
                batch.longest = new_longest
                batch.real += lengths[position]
                break
        else:
            return


def select_batch(lengths: Sequence[int], limits: BatchLimits, owners: Sequence[object] | None = None) -> list[int]:
    """Pick the next batch from waiting pairs given in arrival order; returns their positions.

    The oldest pair (position 0) is always taken, so nothing starves. The batch grows first through the other
    waiting pairs of the oldest request (``owners`` names each pair's request), then through everything else in the
    window; each time through the pairs of nearest length, adding whichever wastes the fewest padded tokens, while
    the batch stays within ``max_batch_size`` pairs, ``max_batch_tokens`` padded tokens and ``max_padding_ratio`` of
    padding. Finishing the oldest request first means that under overload a multi-pair request completes before its
    deadline, instead of every request advancing a little and all of them expiring half computed.
    """
    if not lengths:
        return []
    window = min(len(lengths), limits.window)
    batch = _Batch({0}, lengths[0], lengths[0])
    if owners is not None:
        _grow(batch, [position for position in range(1, window) if owners[position] is owners[0]], lengths, limits)
    _grow(batch, [position for position in range(1, window) if position not in batch.chosen], lengths, limits)
    return sorted(batch.chosen, key=lambda position: (lengths[position], position))
