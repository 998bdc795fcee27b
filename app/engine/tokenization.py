"""Pair tokenization with the checkpoint's own fast (Rust) tokenizer, before anything is queued.

Tokenizing up front lets the batcher know every pair's length, and the Rust tokenizer releases the GIL, so it runs
in a thread pool beside the event loop and the device worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tokenizers import Encoding, Tokenizer

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


# Where a text may be cut before tokenizing: at a U+0020 that follows no white space, so the head ends in a word's
# last character. Only U+0020 qualifies (and only for a tokenizer whose pre-tokenizer splits words at spaces and that
# passes the start-up probe): other white space may be deleted or joined by a normalizer (BERT's drops U+000B and
# U+001C-U+001F), and a head ending in white space may end in a token of its own (a lone "▁" after NFKC).
_SAFE_BREAK = re.compile(r"(?<!\s) ")
# Pre-tokenizers that split words at spaces (with a split flag, the value it must have): a model that may join
# words (SentencePiece trained across spaces, Metaspace without split) can change every id when the text is cut.
_SPLITTING_PRE_TOKENIZERS = {
    "WhitespaceSplit": None,
    "Whitespace": None,
    "BertPreTokenizer": None,
    "Metaspace": ("split", True),
    "ByteLevel": ("use_regex", True),
}
# Texts the start-up probe cuts at every safe break (written for the project): ids of each head must begin the ids
# of the whole text.
_BREAK_PROBES = (
    "Der Zug nach Hamburg kam heute  zwanzig Minuten zu spät an.",
    "Il pleut sur la ville depuis ce matin, et personne n'a de parapluie.",
    "El niño  corrió hasta la playa \u00a0 con su perro.",
    "Он читал книгу\u000b весь вечер у окна.",
    "他 在 喝茶 ， 她 在 看书 。",
    "e\u0301 cole, cafe\u0301 noir,\u3000 fin",
)


class NeedsWholeText(Exception):
    """A head could not prove the tokens of the whole text; the encoder must read ``chars`` characters in all."""

    def __init__(self, chars: int) -> None:
        super().__init__(f"{chars} characters to tokenize")
        self.chars = chars


def longest_piece_chars(backend: Tokenizer) -> int:
    """Characters of the vocabulary's longest piece (word-boundary marks aside): no token covers more, except a run of
    unknown characters fused into one."""
    return max((len(piece.lstrip("\u2581").removeprefix("##")) for piece in backend.get_vocab()), default=1)


def _splits_words_at_spaces(definition: dict[str, Any]) -> bool:
    """What the tokenizer's definition says: a pre-tokenizer that splits at spaces, no added token that holds one."""
    if any(" " in token.get("content", "") for token in definition.get("added_tokens") or []):
        return False
    pre_tokenizer = definition.get("pre_tokenizer") or {}
    steps = pre_tokenizer.get("pretokenizers", []) if pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]
    for step in steps:
        if step.get("type") in _SPLITTING_PRE_TOKENIZERS:
            flag = _SPLITTING_PRE_TOKENIZERS[step["type"]]
            if flag is None or step.get(flag[0], flag[1]) == flag[1]:
                return True
    return False


def splits_at_spaces(backend: Tokenizer, definition: str) -> bool:
    """Whether cutting before a space keeps the tokens before it: the definition must say its words split at spaces,
    and the probes must agree (a normalizer that joins across spaces fails them). Else no text is cut. ``definition``
    is ``backend.to_str()``, which the encoder has already read."""
    if not _splits_words_at_spaces(json.loads(definition)):
        return False
    for text in _BREAK_PROBES:
        whole = backend.encode(text, add_special_tokens=False).ids
        for match in _SAFE_BREAK.finditer(text):
            head = backend.encode(text[: match.start()], add_special_tokens=False).ids
            if whole[: len(head)] != head:
                return False
    return True


class PairEncoder:
    """Encodes (premise, hypothesis) pairs; over-long pairs lose premise tokens (``only_first``) or are refused.

    Tokenization costs time and memory in the length of the text, not of the result, so a text over ``char_bound``
    characters (twice what ``max_seq_len`` tokens of the longest piece could cover) is first cut to its head: up to
    the last space within the bound, in the bound's second half. Because the tokenizer splits words at that space, the
    head's ids begin the whole text's, so a head that overflows keeps exactly the whole text's tokens, and a head too
    long to fit proves the whole too long. Where there is no such space, or the head fits (spaces or a fused unknown
    run held few tokens), the whole text decides: ``encode`` reads it, or, with ``read_whole=False``, raises
    ``NeedsWholeText`` so the caller can account for it first.
    """

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
        self.cuts = splits_at_spaces(self._plain, definition)
        self.char_bound = 2 * max_seq_len * (longest_piece_chars(backend) + 1)

    def head(self, text: str) -> str | None:
        """``text`` itself within ``char_bound``; else its head before a safe break, or None where it has none."""
        if len(text) <= self.char_bound:
            return text
        if not self.cuts:
            return None
        breaks = [match.start() for match in _SAFE_BREAK.finditer(text, self.char_bound // 2, self.char_bound)]
        return text[: breaks[-1]] if breaks else None

    def cost(self, pairs: Sequence[tuple[str, str]]) -> int:
        """Characters a first pass may read for ``pairs``: each head twice and one pair's heads once more (only to find
        and measure the pair a refusal is for); ``NeedsWholeText`` names what a second pass may read."""
        bound = self.char_bound
        heads = sum(min(len(premise), bound) + min(len(hypothesis), bound) for premise, hypothesis in pairs)
        return 2 * heads + 2 * bound

    def encode(self, pairs: Sequence[tuple[str, str]], truncate: bool = True, read_whole: bool = True) -> EncodedPairs:
        heads = [(self.head(premise), self.head(hypothesis)) for premise, hypothesis in pairs]
        undecided = {
            index for index, (premise, hypothesis) in enumerate(heads) if premise is None or hypothesis is None
        }
        decidable = [index for index in range(len(pairs)) if index not in undecided]
        first_pass = [(heads[index][0] or "", heads[index][1] or "") for index in decidable]
        if truncate:
            decided = self._truncate_heads(pairs, decidable, first_pass, undecided)
        else:
            decided = self._refuse_heads(pairs, decidable, first_pass, undecided)
        if undecided and not read_whole:
            whole = sum(len(pairs[index][0]) + len(pairs[index][1]) for index in undecided)
            raise NeedsWholeText(self.cost(pairs) + 2 * whole)  # a whole pair is read twice only to refuse it
        ids, truncated = [], []
        for index, pair in enumerate(pairs):
            encoding = self._encode_whole(index, pair, truncate) if index in undecided else decided[index]
            ids.append(encoding.ids)
            truncated.append(bool(encoding.overflowing))
        return EncodedPairs(ids, truncated)

    def _truncate_heads(
        self, pairs: Sequence[tuple[str, str]], indices: list[int], heads: list[tuple[str, str]], undecided: set[int]
    ) -> dict[int, Encoding]:
        """Heads that settle their pair; the others join ``undecided``."""
        try:
            encodings = self._truncating.encode_batch(heads)
        except Exception:
            for index, head in zip(indices, heads, strict=True):
                self._refuse_a_hypothesis_that_cannot_fit(index, head, cut=head != pairs[index])
            raise
        decided = {}
        for index, head, encoding in zip(indices, heads, encodings, strict=True):
            premise_cut = len(head[0]) < len(pairs[index][0])
            hypothesis_cut = len(head[1]) < len(pairs[index][1])
            if hypothesis_cut or (premise_cut and not encoding.overflowing):
                undecided.add(index)  # the hypothesis fits only so far, or the premise's head did not fill the budget
            else:
                decided[index] = encoding
        return decided

    def _refuse_heads(
        self, pairs: Sequence[tuple[str, str]], indices: list[int], heads: list[tuple[str, str]], undecided: set[int]
    ) -> dict[int, Encoding]:
        decided = {}
        for index, head, encoding in zip(indices, heads, self._plain.encode_batch(heads), strict=True):
            cut = head != pairs[index]
            if len(encoding.ids) > self.max_seq_len:
                raise too_long(index, len(encoding.ids), self.max_seq_len, at_least=cut)
            if cut:
                undecided.add(index)  # the head fits, which proves nothing about the whole text
            else:
                decided[index] = encoding
        return decided

    def _encode_whole(self, index: int, pair: tuple[str, str], truncate: bool) -> Encoding:
        if not truncate:
            encoding = self._plain.encode(*pair)
            if len(encoding.ids) > self.max_seq_len:
                raise too_long(index, len(encoding.ids), self.max_seq_len)
            return encoding
        try:
            return self._truncating.encode(*pair)
        except Exception:
            self._refuse_a_hypothesis_that_cannot_fit(index, pair, cut=False)
            raise

    def _refuse_a_hypothesis_that_cannot_fit(self, index: int, pair: tuple[str, str], cut: bool) -> None:
        """The truncating tokenizer raises when a hypothesis alone leaves no room for the premise: refuse that pair."""
        try:
            self._truncating.encode(*pair)
        except Exception:
            length = len(self._plain.encode(*pair).ids)
            measure = f"at least {length}" if cut else str(length)
            raise InputTooLongError(
                index,
                length,
                self.max_seq_len,
                f"pair {index}: the hypothesis alone does not fit max_seq_len {self.max_seq_len} "
                f"(pair is {measure} tokens); only the premise is ever truncated",
            ) from None


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
        """Raises OverloadedError past the backlog's bounds, InputTooLongError for a pair that cannot fit. A text whose
        head cannot settle it is read whole in a second pass, admitted (or refused) for its full length."""
        if self.inline(pairs):
            return encoder.encode(pairs, truncate)
        try:
            return await self._run(len(pairs), encoder.cost(pairs), encoder.encode, pairs, truncate, False)
        except NeedsWholeText as needed:
            chars = needed.chars
        return await self._run(len(pairs), chars, encoder.encode, pairs, truncate, True)

    async def _run(
        self,
        pairs: int,
        chars: int,
        encode: Callable[[Sequence[tuple[str, str]], bool, bool], EncodedPairs],
        *arguments: Any,
    ) -> EncodedPairs:
        if self.waiting_pairs + pairs > self.max_pairs or self.waiting_chars + chars > self.max_chars:
            raise OverloadedError(
                f"the tokenization backlog is full ({self.waiting_pairs} pairs, {self.waiting_chars} characters "
                f"waiting; at most {self.max_pairs} pairs, {self.max_chars} characters)",
                retry_after_s=1.0,
            )
        self.waiting_pairs += pairs
        self.waiting_chars += chars
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, encode, *arguments)
        finally:
            self.waiting_pairs -= pairs
            self.waiting_chars -= chars

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
