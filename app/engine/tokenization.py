"""Pair tokenization with the checkpoint's own fast (Rust) tokenizer, before anything is queued.

Tokenizing up front lets the batcher know every pair's length, and the Rust tokenizer releases the GIL, so it runs
in a thread pool beside the event loop and the device worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tokenizers import Tokenizer

from app.engine.errors import InputTooLongError, OverloadedError

# Requests this small are tokenized on the event loop: the Rust tokenizer needs tens of microseconds for them, less
# than the thread-pool hop would cost; larger ones go to the pool so the loop keeps serving.
INLINE_TOKENIZATION_CHARS = 1024
DEFAULT_MAX_TOKENIZING_CHARS = 4 * 1_048_576  # XNLI_SERVE_MAX_TOKENIZING_CHARS: four full 1 MiB bodies


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


def too_long(index: int, length: int, max_seq_len: int, at_least: bool = False) -> InputTooLongError:
    """The refusal of a pair over ``max_seq_len`` when truncation was not asked for. ``at_least``: ``length`` counts
    the pair's bounded text only (the whole text is longer still)."""
    measure = f"at least {length}" if at_least else str(length)
    return InputTooLongError(
        index,
        length,
        max_seq_len,
        f"pair {index} is {measure} tokens long, over max_seq_len {max_seq_len}; send truncate=true to cut the premise",
    )


# Where a text may be cut before tokenizing: white space that every pre-tokenizer splits words at.
_WORD_BREAK = re.compile(r"\s", re.UNICODE)


def longest_piece_chars(backend: Tokenizer) -> int:
    """Characters of the vocabulary's longest piece (word-boundary marks aside): no token covers more, except a run of
    unknown characters fused into one."""
    return max((len(piece.lstrip("\u2581").removeprefix("##")) for piece in backend.get_vocab()), default=1)


class PairEncoder:
    """Encodes (premise, hypothesis) pairs; over-long pairs lose premise tokens (``only_first``) or are refused.

    Tokenization costs time and memory in the length of the text, not of the result, so each text is first cut to
    ``char_bound`` characters (at a word break in its last half when there is one): twice the characters that
    ``max_seq_len`` tokens of the longest piece could cover. The tokens kept are then the same as from the whole text
    (the words before the cut tokenize alike, and they hold more than ``max_seq_len`` tokens); where a cut text yields
    too few tokens to prove that (a run of unknown characters fused into one token), the whole text is tokenized.
    """

    def __init__(self, backend: Tokenizer, max_seq_len: int) -> None:
        self.max_seq_len = max_seq_len
        definition = backend.to_str()
        # Names the encoding rules: two encoders with the same fingerprint give the same ids for every pair (the
        # front-end processes send it with the ids they encoded, the engine process checks it against its own).
        self.fingerprint = hashlib.blake2b(f"{max_seq_len}\n{definition}".encode(), digest_size=16).hexdigest()
        self.char_bound = 2 * max_seq_len * (longest_piece_chars(backend) + 1)
        self._plain = Tokenizer.from_str(definition)
        self._plain.no_padding()
        self._plain.no_truncation()
        self._truncating = Tokenizer.from_str(definition)
        self._truncating.no_padding()
        self._truncating.enable_truncation(max_seq_len, strategy="only_first")

    def bounded(self, text: str) -> str:
        """``text`` itself if within ``char_bound``, else its head cut at a word break (or at the bound)."""
        if len(text) <= self.char_bound:
            return text
        half = self.char_bound // 2
        breaks = [match.start() for match in _WORD_BREAK.finditer(text, half, self.char_bound)]
        return text[: breaks[-1] if breaks else self.char_bound]

    def cost(self, pairs: Sequence[tuple[str, str]]) -> int:
        """Characters the tokenizer will read for ``pairs`` (after the cut)."""
        bound = self.char_bound
        return sum(min(len(premise), bound) + min(len(hypothesis), bound) for premise, hypothesis in pairs)

    def encode(self, pairs: Sequence[tuple[str, str]], truncate: bool = True) -> EncodedPairs:
        bounded = [(self.bounded(premise), self.bounded(hypothesis)) for premise, hypothesis in pairs]
        if not truncate:
            return self._encode_plain(pairs, bounded)
        try:
            encodings = self._truncating.encode_batch(bounded)
        except Exception:
            # Only raised when a hypothesis alone leaves no room for the premise; find which pair, then refuse it.
            for index, pair in enumerate(bounded):
                try:
                    self._truncating.encode(*pair)
                except Exception:
                    length = len(self._plain.encode(*pair).ids)
                    measure = f"at least {length}" if pair[1] is not pairs[index][1] else str(length)
                    raise InputTooLongError(
                        index,
                        length,
                        self.max_seq_len,
                        f"pair {index}: the hypothesis alone does not fit max_seq_len {self.max_seq_len} "
                        f"(pair is {measure} tokens); only the premise is ever truncated",
                    ) from None
            raise
        ids, truncated = [], []
        for index, encoding in enumerate(encodings):
            premise_cut = bounded[index][0] is not pairs[index][0]
            hypothesis_cut = bounded[index][1] is not pairs[index][1]
            if hypothesis_cut or (premise_cut and not encoding.overflowing):
                encoding = self._truncating.encode(*pairs[index])  # the cut could not prove the tokens kept
            ids.append(encoding.ids)
            truncated.append(bool(encoding.overflowing))
        return EncodedPairs(ids, truncated)

    def _encode_plain(self, pairs: Sequence[tuple[str, str]], bounded: list[tuple[str, str]]) -> EncodedPairs:
        encodings = self._plain.encode_batch(bounded)
        ids = []
        for index, encoding in enumerate(encodings):
            cut = bounded[index] != pairs[index]
            if len(encoding.ids) > self.max_seq_len:
                raise too_long(index, len(encoding.ids), self.max_seq_len, at_least=cut)
            if cut:  # the cut text fits, so it proves nothing about the whole one
                encoding = self._plain.encode(*pairs[index])
                if len(encoding.ids) > self.max_seq_len:
                    raise too_long(index, len(encoding.ids), self.max_seq_len)
            ids.append(encoding.ids)
        return EncodedPairs(ids, [False] * len(encodings))


class TokenizationPool:
    """Where requests are tokenized: small ones on the event loop, larger ones in a thread pool whose backlog is
    bounded in pairs and in characters (after the encoder's cut), so a burst is refused (429) instead of queueing
    without end. Used from the event loop only."""

    def __init__(self, workers: int, max_pairs: int, max_chars: int = DEFAULT_MAX_TOKENIZING_CHARS) -> None:
        self.max_pairs = max_pairs
        self.max_chars = max_chars
        self.waiting_pairs = 0  # pairs handed to the pool and not yet tokenized
        self.waiting_chars = 0  # ... and the characters the tokenizer will read for them
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="tokenize")

    @staticmethod
    def inline(pairs: Sequence[tuple[str, str]]) -> bool:
        return sum(len(premise) + len(hypothesis) for premise, hypothesis in pairs) <= INLINE_TOKENIZATION_CHARS

    async def encode(self, encoder: PairEncoder, pairs: Sequence[tuple[str, str]], truncate: bool) -> EncodedPairs:
        """Raises OverloadedError past the backlog's bounds, InputTooLongError for a pair that cannot fit."""
        if self.inline(pairs):
            return encoder.encode(pairs, truncate)
        chars = encoder.cost(pairs)
        if self.waiting_pairs + len(pairs) > self.max_pairs or self.waiting_chars + chars > self.max_chars:
            raise OverloadedError(
                f"the tokenization backlog is full ({self.waiting_pairs} pairs, {self.waiting_chars} characters "
                f"waiting; at most {self.max_pairs} pairs, {self.max_chars} characters)",
                retry_after_s=1.0,
            )
        self.waiting_pairs += len(pairs)
        self.waiting_chars += chars
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, encoder.encode, pairs, truncate)
        finally:
            self.waiting_pairs -= len(pairs)
            self.waiting_chars -= chars

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
