"""Batch formation policy: which waiting pairs run together. Pure functions, so they are tested without threads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.engine.runner import padded_length


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


def select_batch(lengths: Sequence[int], limits: BatchLimits) -> list[int]:
    """Pick the next batch from waiting pairs given in arrival order; returns their positions.

    The oldest pair (position 0) is always taken, so nothing starves. Around it the batch grows through the
    pairs of nearest length, adding whichever neighbour wastes the fewest padded tokens, while the batch stays
    within ``max_batch_size`` pairs, ``max_batch_tokens`` padded tokens and ``max_padding_ratio`` of padding.
    """
    if not lengths:
        return []
    window = min(len(lengths), limits.window)
    order = sorted(range(window), key=lambda position: (lengths[position], position))
    head = order.index(0)
    low = high = head
    longest = lengths[0]
    count = 1
    real = lengths[0]
    while count < limits.max_batch_size:
        options: list[tuple[int, int, int]] = []  # (added padding, arrival position, side)
        if low > 0:
            shorter = order[low - 1]
            options.append((longest - lengths[shorter], shorter, -1))
        if high < window - 1:
            longer = order[high + 1]
            options.append((count * (lengths[longer] - longest), longer, +1))
        grown = False
        for _, position, side in sorted(options):
            new_longest = max(longest, lengths[position])
            cost = (count + 1) * padded_length(new_longest)
            padding = 1.0 - (real + lengths[position]) / cost
            if cost <= limits.max_batch_tokens and padding <= limits.max_padding_ratio:
                if side < 0:
                    low -= 1
                else:
                    high += 1
                longest = new_longest
                count += 1
                real += lengths[position]
                grown = True
                break
        if not grown:
            break
    return order[low : high + 1]
