"""A user's next send under a blocks schedule whose rate changes from block to block (loadtests.arrivals)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loadtests.arrivals import block_at, next_arrival

RATES = [40.0, 160.0] * 20  # the SLO search's blocks: a slow variant beside a twin


def simulate(users: int, poisson: bool, seed: int = 0) -> np.ndarray:
    """Arrivals per block of ``users`` users that each send at once when due (no answer holds them up)."""
    generator = np.random.default_rng(seed)
    counts = np.zeros(len(RATES))
    for _ in range(users):
        time = -3.0 * generator.random()  # spawned before the schedule starts; sends then go nowhere
        while True:
            time = next_arrival(time, generator.exponential() if poisson else 1.0, 0.0, 1.2, RATES, users)
            block = math.floor(time / 1.2)
            if block >= len(RATES):
                break
            if block >= 0:
                counts[block] += 1
    return counts


def test_every_block_gets_its_own_rate_whatever_the_block_before() -> None:
    poisson = True  # as --mode slo sends (even pacing is exact by test_unit_time_change_across_blocks)
    counts = simulate(120, poisson)  # 120 users: 3 s between one user's sends at 40/s, 0.75 s at 160/s
    assert counts[0::2].mean() == pytest.approx(40.0 * 1.2, rel=0.06)
    assert counts[1::2].mean() == pytest.approx(160.0 * 1.2, rel=0.03)
    # A gap drawn at one block's rate used to run on into the next: a 160/s block after a 40/s one got a fraction
    # of its rate at its start (its users still asleep on 3 s gaps) while the generator idled; the first fifth of
    # each block now gets its share too.
    starts = simulate_starts(120, poisson)
    assert starts[1::2].mean() == pytest.approx(160.0 * 0.24, rel=0.08)


def simulate_starts(users: int, poisson: bool, seed: int = 1) -> np.ndarray:
    """Arrivals in the first fifth (0.24 s) of every block."""
    generator = np.random.default_rng(seed)
    counts = np.zeros(len(RATES))
    for _ in range(users):
        time = -3.0 * generator.random()
        while True:
            time = next_arrival(time, generator.exponential() if poisson else 1.0, 0.0, 1.2, RATES, users)
            block = math.floor(time / 1.2)
            if block >= len(RATES):
                break
            if block >= 0 and time - block * 1.2 < 0.24:
                counts[block] += 1
    return counts


def test_unit_time_change_across_blocks() -> None:
    # one user, 2 requests/s in block 0 (1 s) and 4 in block 1: half a unit left at the boundary takes 1/8 s
    assert next_arrival(0.75, 1.0, 0.0, 1.0, [2.0, 4.0], 1) == pytest.approx(1.125)
    assert next_arrival(-3.0, 1.0, 0.0, 1.0, [2.0, 4.0], 1) == pytest.approx(-2.5)  # before the start: block 0's
    assert next_arrival(0.0, 1.0, 0.0, 1.0, [0.0, 4.0], 1) == pytest.approx(1.25)  # a silent block is skipped
    assert next_arrival(5.0, 1.0, 0.0, 1.0, [2.0, 4.0], 1) == pytest.approx(5.25)  # after the last: the last's
    assert next_arrival(0.75, 1.0, 0.0, 1.0, [2.0, 0.0], 1) == math.inf  # half a unit left, and no rate after
    assert next_arrival(0.0, 1.0, 0.0, 1.0, [], 1) == math.inf


def test_quiet_gaps_between_blocks_send_nothing_and_take_nothing_from_the_rate() -> None:
    # blocks of 1 s separated by 0.5 s gaps: the unit left at a block's end carries over the gap, none lands in it
    assert next_arrival(0.75, 1.0, 0.0, 1.0, [2.0, 4.0], 1, gap_seconds=0.5) == pytest.approx(1.625)
    assert next_arrival(1.2, 1.0, 0.0, 1.0, [2.0, 4.0], 1, gap_seconds=0.5) == pytest.approx(1.75)  # from a gap
    assert next_arrival(0.0, 1.0, 0.0, 1.0, [0.0, 4.0], 1, gap_seconds=0.5) == pytest.approx(1.75)
    generator = np.random.default_rng(2)
    sends, time = [], -1.0
    while (time := next_arrival(time, generator.exponential(), 0.0, 1.2, RATES, 1, gap_seconds=0.8)) < 2.0 * (
        len(RATES) - 1
    ):
        sends.append(time)
    blocks = [block_at(moment, 0.0, 1.2, 0.8) for moment in sends if moment >= 0]
    assert None not in blocks
    counts = np.bincount(np.array(blocks, dtype=np.int64), minlength=len(RATES))[: len(RATES)]
    assert counts[0:-1:2].mean() == pytest.approx(40.0 * 1.2, rel=0.1)
    assert counts[1:-1:2].mean() == pytest.approx(160.0 * 1.2, rel=0.05)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [(-0.6, -1), (-0.1, None), (0.0, 0), (0.99, 0), (1.0, None), (1.49, None), (1.5, 1), (3.1, 2), (2.6, None)],
)
def test_block_at_names_the_block_or_the_gap(moment: float, expected: int | None) -> None:
    assert block_at(moment, 0.0, 1.0, 0.5) == expected
