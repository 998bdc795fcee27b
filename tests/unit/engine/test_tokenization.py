from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from app.engine.errors import InputTooLongError
from app.engine.tokenization import PairEncoder

LONG_PREMISE = " ".join(["Der Zug nach Hamburg hatte heute Morgen zwanzig Minuten Verspätung."] * 20)


@pytest.fixture(scope="module")
def tokenizer(demo_store: Path) -> object:
    return AutoTokenizer.from_pretrained(demo_store / "xlmr-mnli", local_files_only=True)


@pytest.fixture(scope="module")
def encoder(tokenizer: object) -> PairEncoder:
    return PairEncoder(tokenizer.backend_tokenizer, max_seq_len=32)  # type: ignore[attr-defined]


def test_matches_the_transformers_tokenizer(encoder: PairEncoder, tokenizer: object) -> None:
    pairs = [("Il pleut.", "Le sol est mouillé."), ("他在喝茶。", "他在喝饮料。")]
    encoded = encoder.encode(pairs)
    for (premise, hypothesis), ids in zip(pairs, encoded.ids, strict=True):
        assert ids == tokenizer(premise, hypothesis)["input_ids"]  # type: ignore[operator]
    assert encoded.truncated == [False, False]


def test_long_premise_is_truncated_and_flagged(encoder: PairEncoder, tokenizer: object) -> None:
    encoded = encoder.encode([(LONG_PREMISE, "Der Zug war spät."), ("Il pleut.", "Le sol est mouillé.")])
    assert len(encoded.ids[0]) == 32
    assert encoded.truncated == [True, False]
    expected = tokenizer(LONG_PREMISE, "Der Zug war spät.", truncation="only_first", max_length=32)  # type: ignore[operator]
    assert encoded.ids[0] == expected["input_ids"]


def test_truncate_false_refuses_naming_the_limit(encoder: PairEncoder) -> None:
    with pytest.raises(InputTooLongError, match=r"pair 1 is .* tokens long, over max_seq_len 32") as raised:
        encoder.encode([("Il pleut.", "Le sol est mouillé."), (LONG_PREMISE, "kurz")], truncate=False)
    assert raised.value.pair_index == 1
    assert raised.value.length is not None
    assert raised.value.length > 32


def test_hypothesis_too_long_to_fit_is_refused(encoder: PairEncoder) -> None:
    with pytest.raises(InputTooLongError, match="pair 0: the hypothesis alone does not fit max_seq_len 32"):
        encoder.encode([("kurz", LONG_PREMISE)])
