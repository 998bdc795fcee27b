"""Buckets of the graph variants: which shapes are built, which of them a batch runs in, and padding into them."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest

from app.engine.backends.torch_buckets import BucketPlan, bucket_shapes, length_axis, pad_to_bucket, rows_axis
from app.engine.scheduler.padding import padded_length

LIMITS = [(32, 8192, 256), (256, 16384, 128), (8, 512, 64), (3, 100, 24), (1, 64, 8)]


def batches(max_batch_size: int, max_batch_tokens: int, max_seq_len: int) -> Iterator[tuple[int, int]]:
    """Every (rows, padded width) the batcher can form under these limits."""
    for width in range(8, padded_length(max_seq_len) + 1, 8):
        for rows in range(1, min(max_batch_size, max_batch_tokens // width) + 1):
            yield rows, width


@pytest.mark.parametrize(("longest", "expected"), [(8, [8]), (16, [16]), (72, [16, 32, 48, 64, 72]), (128, None)])
def test_length_axis_steps_are_at_most_half_a_length(longest: int, expected: list[int] | None) -> None:
    axis = length_axis(longest)
    if expected is not None:
        assert axis == expected
    assert axis[-1] == longest
    assert axis == sorted(set(axis))
    assert all(after - before <= max(16, before // 2) for before, after in itertools.pairwise(axis))


@pytest.mark.parametrize(("most", "expected"), [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]), (32, [1, 2, 4, 8, 16, 32])])
def test_rows_axis_is_powers_of_two_and_the_most(most: int, expected: list[int]) -> None:
    assert rows_axis(most) == expected


@pytest.mark.parametrize("limits", LIMITS)
@pytest.mark.parametrize("count", [256, 24, 8])
def test_buckets_cover_every_batch_the_batcher_forms(limits: tuple[int, int, int], count: int) -> None:
    shapes = bucket_shapes(*limits, count)
    assert 1 <= len(shapes) <= count
    assert shapes == sorted(shapes, key=lambda shape: (shape[0] * shape[1], shape))
    assert shapes[0] == (1, min(16, padded_length(limits[2])))  # single pairs always have the cheapest bucket
    corners = len(length_axis(padded_length(limits[2]))) * len(rows_axis(limits[0]))
    if count >= min(corners, 6):  # room for two lengths by up to three rows: no batch needs to run eagerly
        for rows, width in batches(*limits):
            assert any(r >= rows and length >= width for r, length in shapes), (rows, width)


def test_too_few_buckets_keep_the_smallest() -> None:
    assert bucket_shapes(32, 8192, 256, 2) == [(1, 16), (1, 256)]


def test_padding_into_a_bucket_keeps_the_batch_in_the_corner() -> None:
    ids = np.array([[0, 5, 6, 2], [0, 7, 2, 1]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=np.int64)
    padded_ids, padded_mask = pad_to_bucket(ids, mask, (4, 8), pad_token_id=1)
    assert padded_ids.shape == padded_mask.shape == (4, 8)
    np.testing.assert_array_equal(padded_ids[:2, :4], ids)
    np.testing.assert_array_equal(padded_mask[:2, :4], mask)
    assert (padded_ids[:, 4:] == 1).all()
    assert (padded_mask[:2, 4:] == 0).all()
    # each extra row attends to one pad token: never an empty row, which some attention kernels turn into NaN
    np.testing.assert_array_equal(padded_mask[2:], [[1, 0, 0, 0, 0, 0, 0, 0]] * 2)
    assert (padded_ids[2:] == 1).all()


def planned(plan: BucketPlan, lengths: list[int]) -> list[tuple[list[int] | None, tuple[int, int]]]:
    chosen = plan.plan(np.array(lengths, dtype=np.int64))
    return [(None if rows is None else rows.tolist(), bucket) for rows, bucket in chosen]


@pytest.mark.parametrize(
    ("lengths", "expected"),
    [
        ([5], [(None, (1, 16))]),
        ([11, 16], [(None, (2, 16))]),
        ([10, 12], [(None, (2, 16))]),  # two (1, 16) buckets would compute more, not less
        ([100, 10], [([1], (1, 16)), ([0], (1, 128))]),  # fits no bucket whole
        ([12, 70, 9], [([2, 0], (2, 16)), ([1], (1, 128))]),
        ([40, 40, 40], []),  # neither whole nor split: eagerly
        ([200], []),
    ],
)
def test_a_batch_runs_whole_split_by_length_or_eagerly(
    lengths: list[int], expected: list[tuple[list[int] | None, tuple[int, int]]]
) -> None:
    assert planned(BucketPlan([(1, 16), (2, 16), (1, 128)], 1), lengths) == expected


def test_a_few_long_rows_split_off_when_that_saves_a_quarter_of_the_tokens() -> None:
    runner = BucketPlan(bucket_shapes(32, 8192, 256, 32), 1)
    assert planned(runner, [40] * 31 + [250]) == [(list(range(31)), (32, 64)), ([31], (1, 256))]
    assert planned(runner, [60] * 15 + [70]) == [(list(range(15)), (16, 64)), ([15], (1, 128))]  # 1152, not 2048
    assert planned(runner, [60] * 8 + [70] * 8) == [(None, (16, 128))]  # a split would save exactly a quarter
    assert planned(runner, [60] * 16) == [(None, (16, 64))]


def test_a_prepared_batch_is_padded_into_its_planned_buckets() -> None:
    plan = BucketPlan([(1, 16), (2, 16), (1, 128)], pad_token_id=1)
    batch = plan.prepare([[0, *range(5, 103), 2], [0, 5, 6, 2]])  # 100 and 4 tokens: split
    assert batch.count == 2
    assert [(part.bucket, part.count, None if part.rows is None else part.rows.tolist()) for part in batch.parts] == [
        ((1, 16), 1, [1]),
        ((1, 128), 1, [0]),
    ]
    np.testing.assert_array_equal(batch.parts[0].input_ids[0, :4], [0, 5, 6, 2])
    assert batch.parts[0].attention_mask.sum() == 4
    assert plan.prepare([[0, *range(5, 203), 2]]).parts == ()  # fits no bucket: eagerly
