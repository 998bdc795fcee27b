"""Buckets for the compiled or captured torch forward pass (``app.engine.backends.torch_graphs``): which (rows,
padded length) shapes to build, which of them a batch runs in, and the batch padded into them.

Each batch is padded up to the smallest bucket that holds it (extra rows attend to one pad token, extra columns are
padding, as in ``collate``) and its rows of the result are sliced back. A batch with a few long rows may run as two
buckets instead, its shortest rows in one, the rest in the other, when that computes clearly fewer padded tokens
(``SPLIT_GAIN``): less padding for one more replay. A batch that fits no bucket (whole or split) has no parts: it runs
eagerly. Torch-free: shapes and host arrays only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from app.engine.scheduler.padding import PAD_MULTIPLE, collate, padded_length

SPLIT_GAIN = 0.75
"""A batch runs as two buckets (shortest rows, longest rows) only when they compute at most this share of the padded
tokens of the one bucket that holds it whole: a second replay or compiled call is cheap, not free."""
Shape = tuple[int, int]


def length_axis(longest: int) -> list[int]:
    """Padded lengths a bucket may have: every 16 up to 64, every 32 up to 256, every 64 up to 512, then every 128
    (a step is at most half the length below it), and ``longest`` itself."""
    lengths: list[int] = []
    length = 16
    while length < longest:
        lengths.append(length)
        length += 16 if length < 64 else 32 if length < 256 else 64 if length < 512 else 128
    return [*lengths, longest]


def rows_axis(max_rows: int) -> list[int]:
    """Rows a bucket may have: powers of two below ``max_rows``, and ``max_rows``."""
    rows = [1 << power for power in range(max_rows.bit_length()) if 1 << power < max_rows]
    return [*rows, max_rows]


def _gap(axis: list[int]) -> tuple[float, int]:
    """The inner value of ``axis`` whose neighbours are closest (by ratio): the one whose loss adds least padding."""
    if len(axis) <= 2:
        return math.inf, 0
    return min((axis[index + 1] / axis[index - 1], index) for index in range(1, len(axis) - 1))


def bucket_shapes(max_batch_size: int, max_batch_tokens: int, max_seq_len: int, count: int) -> list[Shape]:
    """At most ``count`` (rows, length) buckets, smallest first, covering every batch the batcher can form.

    Each length gets the rows axis below the most rows a batch padded to a width in (previous length, length] may
    hold (``max_batch_tokens`` over the narrowest such width), plus that most. When the grid is larger than
    ``count``, inner lengths or rows are dropped, one at a time, where neighbours are closest (by ratio); if even the
    corners are too many, the smallest buckets are kept (single pairs gain most, large batches least).
    """
    lengths = length_axis(padded_length(max_seq_len))
    rows = rows_axis(max_batch_size)

    def grid() -> list[Shape]:
        shapes: list[Shape] = []
        previous = 0
        for length in lengths:
            most = max(1, min(max_batch_size, max_batch_tokens // (previous + PAD_MULTIPLE)))
            shapes += [(row, length) for row in rows if row < most] + [(most, length)]
            previous = length
        return shapes

    shapes = grid()
    while len(shapes) > count and max(len(rows), len(lengths)) > 2:
        (length_gap, length_index), (row_gap, row_index) = _gap(lengths), _gap(rows)
        if length_gap < row_gap:
            lengths = lengths[:length_index] + lengths[length_index + 1 :]
        else:
            rows = rows[:row_index] + rows[row_index + 1 :]
        shapes = grid()
    return sorted(shapes, key=lambda shape: (shape[0] * shape[1], shape))[:count]


def pad_to_bucket(
    input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64], shape: Shape, pad_token_id: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The batch in the top-left corner of a (rows, length) block; extra columns are padding and each extra row
    attends to one pad token only (a row with nothing to attend to could give NaN in some attention kernels)."""
    rows, width = input_ids.shape
    ids = np.full(shape, pad_token_id, dtype=np.int64)
    mask = np.zeros(shape, dtype=np.int64)
    ids[:rows, :width] = input_ids
    mask[:rows, :width] = attention_mask
    mask[rows:, 0] = 1
    return ids, mask


@dataclass(frozen=True, slots=True)
class Part:
    """Rows of a batch padded into one bucket; ``rows``: their places in the batch (None: all of them, in order)."""

    rows: npt.NDArray[np.int64] | None
    count: int
    input_ids: npt.NDArray[np.int64]
    attention_mask: npt.NDArray[np.int64]
    bucket: Shape


@dataclass(frozen=True, slots=True)
class HostBatch:
    """A collated batch on the host and the bucketed parts it runs as (none: eagerly)."""

    count: int
    input_ids: npt.NDArray[np.int64]
    attention_mask: npt.NDArray[np.int64]
    parts: tuple[Part, ...]


class BucketPlan:
    """The buckets of one variant, and how a batch is padded into them (bucket choices are cached per batch shape)."""

    def __init__(self, shapes: Sequence[Shape], pad_token_id: int) -> None:
        self.shapes = sorted(shapes, key=lambda shape: (shape[0] * shape[1], shape))
        self.pad_token_id = pad_token_id
        self._buckets: dict[tuple[int, int], Shape | None] = {}
        self._rows = sorted({rows for rows, _ in self.shapes})

    def bucket_for(self, rows: int, width: int) -> Shape | None:
        """The smallest bucket that holds a (rows, width) batch, or None."""
        key = (rows, width)
        if key not in self._buckets:
            self._buckets[key] = next((shape for shape in self.shapes if shape[0] >= rows and shape[1] >= width), None)
        return self._buckets[key]

    def plan(self, lengths: npt.NDArray[np.int64]) -> list[tuple[npt.NDArray[np.int64] | None, Shape]]:
        """The buckets a batch of rows this long runs in: the smallest that holds it whole, or its shortest rows in
        one bucket and the rest in another when that computes at most ``SPLIT_GAIN`` of the padded tokens (a batch
        with a few long rows); empty when neither fits (it runs eagerly). Split points tried: the bucket row counts
        from either end."""
        count = len(lengths)
        whole = self.bucket_for(count, padded_length(int(lengths.max())))
        best: list[tuple[npt.NDArray[np.int64] | None, Shape]] = [(None, whole)] if whole is not None else []
        best_tokens = whole[0] * whole[1] * SPLIT_GAIN if whole is not None else math.inf
        if count < 2:
            return best
        order = np.argsort(lengths, kind="stable")
        ordered = lengths[order]
        longest = padded_length(int(ordered[-1]))
        for split in sorted({r for r in self._rows if r < count} | {count - r for r in self._rows if r < count}):
            short = self.bucket_for(split, padded_length(int(ordered[split - 1])))
            long = self.bucket_for(count - split, longest)
            if short is None or long is None:
                continue
            tokens = short[0] * short[1] + long[0] * long[1]
            if tokens < best_tokens:
                best_tokens, best = tokens, [(order[:split], short), (order[split:], long)]
        return best

    def prepare(self, sequences: Sequence[Sequence[int]]) -> HostBatch:
        """Collate and pad into the planned buckets."""
        return self.host_batch(*collate(sequences, self.pad_token_id))

    def host_batch(self, input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64]) -> HostBatch:
        lengths = attention_mask.sum(axis=1)
        parts = []
        for rows, bucket in self.plan(lengths):
            ids, mask = (input_ids, attention_mask) if rows is None else (input_ids[rows], attention_mask[rows])
            width = padded_length(int(lengths.max() if rows is None else lengths[rows].max()))
            padded_ids, padded_mask = pad_to_bucket(ids[:, :width], mask[:, :width], bucket, self.pad_token_id)
            parts.append(Part(rows, len(ids), padded_ids, padded_mask, bucket))
        return HostBatch(len(lengths), input_ids, attention_mask, tuple(parts))
