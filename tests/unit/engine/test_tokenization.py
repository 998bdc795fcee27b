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


def sample_texts() -> dict[str, str]:
    """Each language's sample premises (written for the project), in the order the file gives them."""
    texts: dict[str, list[str]] = {}
    for line in (
        (Path(__file__).resolve().parents[3] / "app" / "demo" / "sample_pairs.tsv").read_text("utf-8").splitlines()
    ):
        if line and not line.startswith("#"):
            language, premise, _, _ = line.split("\t")
            texts.setdefault(language, []).append(premise)
    return {language: " ".join(premises) for language, premises in texts.items()}


SAMPLES = sample_texts()
# Long texts: a script's sentences repeated (with spaces, or none: Chinese, Japanese and Thai write without them),
# a run of characters the tokenizer does not know (fused into a single unknown token), and a run with no break at all.
LONG_TEXTS = {
    **{language: (SAMPLES[language] + " ") * 400 for language in ("en", "de", "ar", "hi", "ru", "sw", "ko")},
    **{language: SAMPLES[language] * 400 for language in ("zh", "ja", "th")},
    "unknown-run": "Ein Satz. " + "\U0001f9ea" * 60_000 + " Ende.",
    "no-break": "x" * 90_000,
}


@pytest.mark.parametrize("name", list(LONG_TEXTS))
def test_cutting_a_long_text_keeps_the_tokens_of_the_whole(encoder: PairEncoder, tokenizer: object, name: str) -> None:
    """The cut before tokenization never changes what is served: ids equal transformers' on the whole text."""
    text = LONG_TEXTS[name]
    assert len(encoder.bounded(text)) < len(text)
    encoded = encoder.encode([(text, "Ein Satz."), ("Il pleut.", "Le sol est mouillé.")])
    expected = tokenizer(text, "Ein Satz.", truncation="only_first", max_length=32)  # type: ignore[operator]
    assert encoded.ids[0] == expected["input_ids"]
    assert encoded.truncated[0] == (len(tokenizer(text, "Ein Satz.")["input_ids"]) > 32)  # type: ignore[operator]


@pytest.mark.parametrize("name", list(LONG_TEXTS))
def test_too_long_is_refused_without_tokenizing_the_whole_text(encoder: PairEncoder, name: str) -> None:
    text = LONG_TEXTS[name]
    whole = len(encoder._plain.encode(text, "kurz").ids)
    if whole <= 32:  # a run fused into one unknown token fits: served, as the whole text would be
        assert encoder.encode([(text, "kurz")], truncate=False).ids[0] == encoder._plain.encode(text, "kurz").ids
        return
    with pytest.raises(InputTooLongError, match=r"pair 0 is (at least )?\d+ tokens long") as raised:
        encoder.encode([(text, "kurz")], truncate=False)
    assert raised.value.length is not None
    assert 32 < raised.value.length <= whole


def test_the_cut_is_bounded_by_max_seq_len(encoder: PairEncoder) -> None:
    text = LONG_TEXTS["en"]
    assert encoder.char_bound < 10_000  # 32 tokens of this vocabulary's longest piece, twice
    assert len(encoder.bounded(text)) <= encoder.char_bound
    assert text[len(encoder.bounded(text))].isspace()  # cut at a word break
    assert encoder.cost([(text, "kurz")]) == encoder.char_bound + 4
