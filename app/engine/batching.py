"""Batch formation policy: which waiting pairs run together. Pure functions, so they are tested without threads."""

from __future__ import annotations

import bisect
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


def _oldest_request(lengths: Sequence[int], owners: Sequence[object] | None, limits: BatchLimits) -> list[int]:
    """The oldest request's waiting pairs that fit one batch, in arrival order (the oldest pair if owners unknown)."""
    if owners is None:
        return [0]
    seed: list[int] = []
    longest = 0
    for position in range(len(lengths)):
        if owners[position] is not owners[0]:
            continue
        new_longest = max(longest, lengths[position])
        if seed and (
            len(seed) >= limits.max_batch_size or (len(seed) + 1) * padded_length(new_longest) > limits.max_batch_tokens
        ):
            break
        seed.append(position)
        longest = new_longest
    return seed


def select_batch(lengths: Sequence[int], limits: BatchLimits, owners: Sequence[object] | None = None) -> list[int]:
    """Pick the next batch from waiting pairs given in arrival order; returns their positions.

    The oldest request's waiting pairs (``owners`` names each pair's request; without it, the oldest pair) are always
    taken, as many as fit, so requests finish in arrival order: under overload a multi-pair request is completed
    before its deadline instead of every request advancing a little and all of them expiring half computed. Around
    them the batch grows through the pairs of nearest length, adding whichever neighbour wastes the fewest padded
    tokens, while the batch stays within ``max_batch_size`` pairs, ``max_batch_tokens`` padded tokens and
    ``max_padding_ratio`` of padding.
    """
    if not lengths:
        return []
    window = min(len(lengths), limits.window)
    seed = _oldest_request(lengths[:window], owners[:window] if owners is not None else None, limits)
    chosen = set(seed)
    longest = max(lengths[position] for position in seed)
    count = len(seed)
    real = sum(lengths[position] for position in seed)
    rest = sorted((position for position in range(window) if position not in chosen), key=lambda p: (lengths[p], p))
    up = bisect.bisect_right([lengths[position] for position in rest], longest)  # first candidate longer than the batch
    down = up - 1  # longest candidate that adds no width
    while count < limits.max_batch_size:
        options: list[tuple[int, int, int]] = []  # (added padding, arrival position, side)
        if down >= 0:
            options.append((longest - lengths[rest[down]], rest[down], -1))
        if up < len(rest):
            options.append((count * (lengths[rest[up]] - longest), rest[up], +1))
        grown = False
        for _, position, side in sorted(options):
            new_longest = max(longest, lengths[position])
            cost = (count + 1) * padded_length(new_longest)
            padding = 1.0 - (real + lengths[position]) / cost
            if cost <= limits.max_batch_tokens and padding <= limits.max_padding_ratio:
                if side < 0:
                    down -= 1
                else:
                    up += 1
                chosen.add(position)
                longest = new_longest
                count += 1
                real += lengths[position]
                grown = True
                break
        if not grown:
            break
    return sorted(chosen, key=lambda position: (lengths[position], position))
