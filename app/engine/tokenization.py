"""Pair tokenization with the checkpoint's own fast (Rust) tokenizer, before anything is queued.

Tokenizing up front lets the batcher know every pair's length, and the Rust tokenizer releases the GIL, so it runs
in a thread pool beside the event loop and the device worker.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tokenizers import Tokenizer

from app.engine.errors import InputTooLongError, OverloadedError

# Requests this small are tokenized on the event loop: the Rust tokenizer needs tens of microseconds for them, less
# than the thread-pool hop would cost; larger ones go to the pool so the loop keeps serving.
INLINE_TOKENIZATION_CHARS = 1024


@dataclass(frozen=True, slots=True)
class EncodedPairs:
    ids: list[list[int]]
    truncated: list[bool]


def checked_encoding(encoded: EncodedPairs, pairs: int, max_seq_len: int) -> EncodedPairs:
    """Pairs another process encoded with the same ``PairEncoder``: one sequence per pair, none over the limit."""
    if len(encoded.ids) != pairs or len(encoded.truncated) != pairs:
        raise ValueError(f"{len(encoded.ids)} encoded sequences for {pairs} pairs")
    for index, ids in enumerate(encoded.ids):
        if len(ids) > max_seq_len:
            raise too_long(index, len(ids), max_seq_len)
    return encoded


def too_long(index: int, length: int, max_seq_len: int) -> InputTooLongError:
    """The refusal of a pair over ``max_seq_len`` when truncation was not asked for."""
    return InputTooLongError(
        index,
        length,
        max_seq_len,
        f"pair {index} is {length} tokens long, over max_seq_len {max_seq_len}; send truncate=true to cut the premise",
    )


class PairEncoder:
    """Encodes (premise, hypothesis) pairs; over-long pairs lose premise tokens (``only_first``) or are refused."""

    def __init__(self, backend: Tokenizer, max_seq_len: int) -> None:
        self.max_seq_len = max_seq_len
        definition = backend.to_str()
        # Names the encoding rules: two encoders with the same fingerprint give the same ids for every pair (the
        # front-end processes send it with the ids they encoded, the engine process checks it against its own).
        self.fingerprint = hashlib.blake2b(f"{max_seq_len}\n{definition}".encode(), digest_size=16).hexdigest()
        self._plain = Tokenizer.from_str(definition)
        self._plain.no_padding()
        self._plain.no_truncation()
        self._truncating = Tokenizer.from_str(definition)
        self._truncating.no_padding()
        self._truncating.enable_truncation(max_seq_len, strategy="only_first")

    def encode(self, pairs: Sequence[tuple[str, str]], truncate: bool = True) -> EncodedPairs:
        if not truncate:
            encodings = self._plain.encode_batch(list(pairs))
            for index, encoding in enumerate(encodings):
                if len(encoding.ids) > self.max_seq_len:
                    raise too_long(index, len(encoding.ids), self.max_seq_len)
            return EncodedPairs([encoding.ids for encoding in encodings], [False] * len(encodings))
        try:
            encodings = self._truncating.encode_batch(list(pairs))
        except Exception:
            # Only raised when a hypothesis alone leaves no room for the premise; find which pair, then refuse it.
            for index, pair in enumerate(pairs):
                try:
                    self._truncating.encode(*pair)
                except Exception:
                    length = len(self._plain.encode(*pair).ids)
                    raise InputTooLongError(
                        index,
                        length,
                        self.max_seq_len,
                        f"pair {index}: the hypothesis alone does not fit max_seq_len {self.max_seq_len} "
                        f"(pair is {length} tokens); only the premise is ever truncated",
                    ) from None
            raise
        return EncodedPairs(
            [encoding.ids for encoding in encodings], [bool(encoding.overflowing) for encoding in encodings]
        )


class TokenizationPool:
    """Where requests are tokenized: small ones on the event loop, larger ones in a thread pool whose backlog is
    bounded, so a burst is refused (429) instead of queueing without end. Used from the event loop only."""

    def __init__(self, workers: int, max_pairs: int) -> None:
        self.max_pairs = max_pairs
        self.waiting_pairs = 0  # pairs handed to the pool and not yet tokenized
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="tokenize")

    @staticmethod
    def inline(pairs: Sequence[tuple[str, str]]) -> bool:
        return sum(len(premise) + len(hypothesis) for premise, hypothesis in pairs) <= INLINE_TOKENIZATION_CHARS

    async def encode(self, encoder: PairEncoder, pairs: Sequence[tuple[str, str]], truncate: bool) -> EncodedPairs:
        """Raises OverloadedError past ``max_pairs`` waiting pairs, InputTooLongError for a pair that cannot fit."""
        if self.inline(pairs):
            return encoder.encode(pairs, truncate)
        if self.waiting_pairs + len(pairs) > self.max_pairs:
            raise OverloadedError(
                f"the tokenization backlog is full ({self.waiting_pairs} pairs waiting, at most {self.max_pairs})",
                retry_after_s=1.0,
            )
        self.waiting_pairs += len(pairs)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, encoder.encode, pairs, truncate)
        finally:
            self.waiting_pairs -= len(pairs)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
