from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.engine.scheduler.batching import BatchLimits, batch_cost, select_batch


def test_takes_everything_waiting_when_it_fits() -> None:
    assert sorted(select_batch([10, 12, 11], BatchLimits(8, 1024))) == [0, 1, 2]


def test_caps_batch_size() -> None:
    chosen = select_batch([16] * 20, BatchLimits(max_batch_size=4, max_batch_tokens=10_000))
    assert len(chosen) == 4
    assert 0 in chosen


def test_caps_padded_tokens_counted_as_rows_times_longest() -> None:
    # 40 pads to 40: 3 rows = 120 tokens fit in 128, a 4th would need 160.
    chosen = select_batch([40, 8, 8, 8, 8], BatchLimits(max_batch_size=32, max_batch_tokens=128))
    assert 0 in chosen
    assert batch_cost([[40, 8, 8, 8, 8][i] for i in chosen]) <= 128
    assert len(chosen) == 3


def test_groups_similar_lengths_around_the_oldest_pair() -> None:
    lengths = [100, 10, 98, 12, 101, 11, 99, 9]
    chosen = select_batch(lengths, BatchLimits(max_batch_size=4, max_batch_tokens=100_000))
    assert sorted(chosen) == [0, 2, 4, 6]
    assert batch_cost([lengths[i] for i in chosen]) == 4 * 104


def test_short_oldest_pair_batches_with_short_ones() -> None:
    lengths = [10, 100, 12, 98, 11, 101, 9]
    chosen = select_batch(lengths, BatchLimits(max_batch_size=4, max_batch_tokens=100_000))
    assert sorted(chosen) == [0, 2, 4, 6]


def test_single_pair_always_taken_even_if_alone_it_fills_the_budget() -> None:
    assert select_batch([512], BatchLimits(max_batch_size=8, max_batch_tokens=512)) == [0]


def test_empty_queue() -> None:
    assert select_batch([], BatchLimits(8, 64)) == []


def test_window_limits_lookahead() -> None:
    limits = BatchLimits(max_batch_size=2, max_batch_tokens=10_000)  # window = 16
    lengths = [50] + [200] * 15 + [50]  # the matching pair sits just past the window
    chosen = select_batch(lengths, limits)
    assert 16 not in chosen


def test_padding_cap_keeps_mismatched_lengths_apart() -> None:
    lengths = [40, 8, 38, 16, 39]
    uncapped = select_batch(lengths, BatchLimits(max_batch_size=8, max_batch_tokens=10_000))
    capped = select_batch(lengths, BatchLimits(max_batch_size=8, max_batch_tokens=10_000, max_padding_ratio=0.15))
    assert sorted(uncapped) == [0, 1, 2, 3, 4]
    assert sorted(capped) == [0, 2, 4]  # 117 real tokens in 3 x 40 padded: 2.5% padding


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=256), min_size=1, max_size=300),
    max_batch_size=st.integers(min_value=1, max_value=64),
    extra_tokens=st.integers(min_value=0, max_value=4096),
    max_padding_ratio=st.sampled_from([1.0, 0.5, 0.15]),
)
def test_invariants(lengths: list[int], max_batch_size: int, extra_tokens: int, max_padding_ratio: float) -> None:
    limits = BatchLimits(max_batch_size, 256 + extra_tokens, max_padding_ratio)
    chosen = select_batch(lengths, limits)
    assert 0 in chosen
    assert len(set(chosen)) == len(chosen)
    assert all(0 <= position < min(len(lengths), limits.window) for position in chosen)
    assert len(chosen) <= max_batch_size
    chosen_lengths = [lengths[position] for position in chosen]
    assert batch_cost(chosen_lengths) <= limits.max_batch_tokens
    if len(chosen) > 1:
        assert 1 - sum(chosen_lengths) / batch_cost(chosen_lengths) <= max_padding_ratio


@pytest.mark.parametrize("count", [1, 31, 32, 33, 200])
def test_full_batches_when_enough_equal_pairs_wait(count: int) -> None:
    chosen = select_batch([24] * count, BatchLimits(max_batch_size=32, max_batch_tokens=32 * 24))
    assert len(chosen) == min(count, 32)


def test_oldest_request_is_finished_first() -> None:
    # Request A (positions 0-3) has mixed lengths; requests B and C bring pairs that would group better with A's first.
    owners = ["A", "A", "A", "A", "B", "B", "C", "C"]
    lengths = [40, 12, 90, 33, 40, 40, 40, 41]
    chosen = select_batch(lengths, BatchLimits(max_batch_size=4, max_batch_tokens=100_000), owners)
    assert sorted(chosen) == [0, 1, 2, 3]  # without owners the batch would be the four pairs of length ~40
    assert sorted(select_batch(lengths, BatchLimits(max_batch_size=4, max_batch_tokens=100_000))) == [0, 4, 5, 6]


def test_oldest_request_larger_than_a_batch_fills_it_oldest_first() -> None:
    owners = ["A"] * 6 + ["B"] * 2
    chosen = select_batch([20] * 8, BatchLimits(max_batch_size=4, max_batch_tokens=100_000), owners)
    assert sorted(chosen) == [0, 1, 2, 3]


def test_oldest_request_respects_the_padding_cap() -> None:
    owners = ["A", "A", "A", "B", "B"]
    lengths = [40, 8, 39, 40, 40]
    capped = BatchLimits(max_batch_size=8, max_batch_tokens=10_000, max_padding_ratio=0.15)
    assert sorted(select_batch(lengths, capped, owners)) == [0, 2, 3, 4]  # A's short pair waits for its own batch


def test_room_left_by_the_oldest_request_goes_to_nearest_lengths() -> None:
    owners = ["A", "A", "B", "C", "D"]
    lengths = [30, 32, 200, 31, 8]
    chosen = select_batch(
        lengths, BatchLimits(max_batch_size=4, max_batch_tokens=100_000, max_padding_ratio=0.2), owners
    )
    assert sorted(chosen) == [0, 1, 3]


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=30),
    seed=st.integers(min_value=0, max_value=2**16),
    max_batch_size=st.integers(min_value=1, max_value=64),
    max_padding_ratio=st.sampled_from([1.0, 0.5, 0.15]),
)
def test_invariants_with_requests(sizes: list[int], seed: int, max_batch_size: int, max_padding_ratio: float) -> None:
    rng = random.Random(seed)
    owners = [request for request, size in enumerate(sizes) for _ in range(size)]
    lengths = [rng.randint(1, 256) for _ in owners]
    limits = BatchLimits(max_batch_size, 256 * max_batch_size, max_padding_ratio)
    chosen = select_batch(lengths, limits, owners)
    window = min(len(lengths), limits.window)
    oldest = [position for position in range(window) if owners[position] == 0]
    assert len(set(chosen)) == len(chosen)
    assert all(0 <= position < window for position in chosen)
    assert len(chosen) <= max_batch_size
    assert batch_cost([lengths[position] for position in chosen]) <= limits.max_batch_tokens
    assert 0 in chosen
    chosen_lengths = [lengths[position] for position in chosen]
    if len(chosen) > 1:
        assert 1 - sum(chosen_lengths) / batch_cost(chosen_lengths) <= max_padding_ratio
    if max_padding_ratio == 1.0:  # nothing but the batch size stops the oldest request
        assert len(set(oldest) & set(chosen)) == min(len(oldest), max_batch_size)
