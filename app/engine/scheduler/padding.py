"""How a batch of token sequences is padded: the one rule the batcher charges by and the runners collate by.

Torch-free (numpy only), so the catalogue and the pure batching policy can use it without loading a backend.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

PAD_MULTIPLE = 8


def padded_length(longest: int, multiple: int = PAD_MULTIPLE) -> int:
    """Round up so tensor-core kernels see aligned shapes (and the batcher charges what actually runs)."""
    return -(-longest // multiple) * multiple


def collate(
    sequences: Sequence[Sequence[int]], pad_token_id: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Right-pad into one (n, L) block with a single masked scatter instead of a Python loop per row."""
    lengths = np.fromiter((len(sequence) for sequence in sequences), dtype=np.int64, count=len(sequences))
    width = padded_length(int(lengths.max()))
    mask = np.arange(width, dtype=np.int64)[None, :] < lengths[:, None]
    input_ids = np.full((len(sequences), width), pad_token_id, dtype=np.int64)
    input_ids[mask] = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
    return input_ids, mask.astype(np.int64)
