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


def next_arrival(
    after: float, units: float, start: float, block_seconds: float, rates: Sequence[float], users: int
) -> float:
    """The time (same clock as ``after`` and ``start``) at which one user's share of the rate, integrated from
    ``after``, reaches ``units``. Block ``k`` runs from ``start + k * block_seconds`` at ``rates[k]`` requests/s
    in all; before the first block the first block's rate holds, after the last the last's. ``inf`` when the rate
    is zero from ``after`` on."""
    if not rates:
        return math.inf
    share = 1.0 / max(1, users)
    block = math.floor((after - start) / block_seconds) if block_seconds > 0 else len(rates)
    time, left = after, units
    while True:
        rate = rates[min(max(block, 0), len(rates) - 1)] * share
        end = math.inf if block >= len(rates) - 1 else start + max(block + 1, 0) * block_seconds
        if rate > 0 and time + left / rate <= end:
            return time + left / rate
        if math.isinf(end):
            return math.inf
        left -= rate * max(0.0, end - time)
        time, block = end, max(block + 1, 0)
