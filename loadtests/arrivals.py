"""When a user of an open-loop schedule sends next, when the schedule's rate changes from block to block.

Every user carries its share (``rate / users``) of the total arrival rate. A user's next send lies where its share
of the rate, integrated over time from its last send, grows by one unit: by exactly one for even pacing, by an
exponential draw for Poisson arrivals (a time change of a unit-rate process, exact for a rate that changes at block
boundaries). A gap drawn from one block's rate therefore never runs on into the next block at that rate: with the
SLO search's blocks (a variant at 160/s beside one at 40/s) a gap drawn at 40/s outlived the next block, and the
160/s block got a fraction of its rate while the load generator sat idle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def block_at(moment: float, start: float, block_seconds: float, gap_seconds: float = 0.0) -> int | None:
    """The index of the block running at ``moment`` (negative before the first), None inside the quiet gap that
    follows each block. Block ``k`` runs from ``start + k * (block_seconds + gap_seconds)`` for ``block_seconds``."""
    period = block_seconds + gap_seconds
    block = math.floor((moment - start) / period)
    return block if moment - start - block * period < block_seconds else None


def next_arrival(
    after: float,
    units: float,
    start: float,
    block_seconds: float,
    rates: Sequence[float],
    users: int,
    gap_seconds: float = 0.0,
) -> float:
    """The time (same clock as ``after`` and ``start``) at which one user's share of the rate, integrated from
    ``after``, reaches ``units``. Block ``k`` runs from ``start + k * (block_seconds + gap_seconds)`` for
    ``block_seconds`` at ``rates[k]`` requests/s in all, then the rate is zero for ``gap_seconds`` (the previous
    variant's requests drain before the next block starts); before the first block the first block's rate holds,
    from the last block's start the last's. ``inf`` when the rate is zero from ``after`` on."""
    if not rates:
        return math.inf
    share = 1.0 / max(1, users)
    period = block_seconds + gap_seconds
    time, left = after, units
    if time < start:  # before the first block: its rate, up to its start
        rate = rates[0] * share
        if rate > 0 and time + left / rate <= start:
            return time + left / rate
        left -= rate * (start - time)
        time = start
    block = min(math.floor((time - start) / period), len(rates) - 1) if period > 0 else len(rates) - 1
    while True:
        opens = start + block * period
        last = block >= len(rates) - 1
        closes = math.inf if last else opens + block_seconds
        time = max(time, opens)
        rate = rates[block] * share
        if rate > 0 and time + left / rate <= closes:
            return time + left / rate
        if last:
            return math.inf
        left -= rate * max(0.0, closes - time)
        block += 1
