from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from transformers import AutoTokenizer

from app.engine.errors import InputTooLongError, OverloadedError
from app.engine.tokenization import NeedsWholeText, PairEncoder, TokenizationPool

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


@pytest.mark.parametrize("name", ["en", "de", "ar", "hi", "ru", "sw", "ko"])
def test_a_text_with_spaces_is_settled_by_its_head_alone(encoder: PairEncoder, name: str) -> None:
    text = LONG_TEXTS[name]
    head = encoder.head(text)
    assert head is not None
    assert encoder.char_bound // 2 <= len(head) <= encoder.char_bound < 10_000
    assert text[len(head)] == " "  # before the first space of a run
    assert not head.endswith(" ")
    assert encoder.cost([(text, "kurz")]) == 2 * (encoder.char_bound + 4) + 2 * encoder.char_bound  # read twice at most
    # read_whole=False: a pass over heads settles both modes (NeedsWholeText would say it could not)
    assert encoder.encode([(text, "kurz")], read_whole=False).truncated == [True]
    with pytest.raises(InputTooLongError, match="at least"):
        encoder.encode([(text, "kurz")], truncate=False, read_whole=False)
    with pytest.raises(InputTooLongError, match=r"the hypothesis alone does not fit .* at least"):
        encoder.encode([("kurz", text)], read_whole=False)  # a long hypothesis refused from its head


UNSETTLED = {
    **{language: SAMPLES[language].replace(" ", "") * 400 for language in ("zh", "ja", "th")},  # no space at all
    "unknown-run": LONG_TEXTS["unknown-run"],
    "no-break": LONG_TEXTS["no-break"],
}


@pytest.mark.parametrize("name", list(UNSETTLED))
def test_a_text_its_head_cannot_settle_is_read_whole_and_accounted(
    encoder: PairEncoder, tokenizer: object, name: str
) -> None:
    """No space in the window, or a head that holds too few tokens: the first pass says how much it must read."""
    text = UNSETTLED[name]
    pairs = [(text, "kurz"), ("Il pleut.", "Le sol est mouillé.")]
    with pytest.raises(NeedsWholeText) as needed:
        encoder.encode(pairs, read_whole=False)
    assert needed.value.chars == encoder.cost(pairs) + 2 * (len(text) + len("kurz"))
    expected = tokenizer(text, "kurz", truncation="only_first", max_length=32)  # type: ignore[operator]
    assert encoder.encode(pairs).ids[0] == expected["input_ids"]


# Hostile layouts of words for a tokenizer whose normalizer deletes control characters (as BERT's does): words
# joined by them (white space to a regex, not to the tokenizer), long runs of them or of spaces before a few words.
JOINED = "\u000b".join(["Zugverspätung", "heute", "Morgen", "abcdef", "Bahnhof"] * 400)
HOSTILE_TEXTS = {
    "joined-by-vertical-tabs": JOINED,
    "joined-with-spaces-far-apart": (JOINED[:3000] + " ") * 20,
    "deleted-run-then-words": "\u001c" * 6000 + " ".join(["Zug", "Bahnhof", "heute"] * 300),
    "space-run-then-words": " " * 6000 + " ".join(["Zug", "Bahnhof", "heute"] * 300),
    "ideographic-spaces": "\u3000".join(["東京", "駅", "電車"] * 2000),
    "double-spaces": "  ".join(["le", "train", "était", "en", "retard"] * 800),
    "word-split-at-the-bound": "",  # built in the test: it depends on the encoder's bound
}


@pytest.fixture(scope="module")
def control_deleting(tokenizer: object) -> Tokenizer:
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # type: ignore[attr-defined]
    deleting = normalizers.Replace(Regex("[\u0000-\u001f]"), "")
    backend.normalizer = (
        normalizers.Sequence([deleting, backend.normalizer]) if backend.normalizer is not None else deleting
    )
    return backend


@pytest.mark.parametrize("hypothesis_words", [1, 6, 12, 13])  # the premise keeps 26, 16, 4, 2 tokens
@pytest.mark.parametrize("name", list(HOSTILE_TEXTS))
def test_hostile_layouts_keep_the_tokens_of_the_whole(
    control_deleting: Tokenizer, name: str, hypothesis_words: int
) -> None:
    """Whatever is left of the premise's budget (a long hypothesis leaves a few tokens), the ids are the whole
    text's: no cut inside what the tokenizer sees as one word."""
    encoder = PairEncoder(control_deleting, max_seq_len=32)
    assert encoder.cuts
    premise, hypothesis = HOSTILE_TEXTS[name], " ".join(["Zug"] * hypothesis_words)
    if name == "word-split-at-the-bound":  # a cut at the vertical tab would keep "retard", not "retardretard"
        premise = "\u001c" * (encoder.char_bound - 8) + "retard\u000bretard" + " Ende" * 10
    reference = Tokenizer.from_str(control_deleting.to_str())
    reference.enable_truncation(32, strategy="only_first")
    whole = reference.encode(premise, hypothesis)
    encoded = encoder.encode([(premise, hypothesis)])
    assert encoded.ids[0] == whole.ids
    assert encoded.truncated[0] == bool(whole.overflowing)
    head = encoder.head(premise)
    assert head is None or premise[len(head)] == " "


def test_a_tokenizer_that_joins_across_spaces_is_never_cut(tokenizer: object) -> None:
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # type: ignore[attr-defined]
    backend.normalizer = normalizers.Replace(" ", "")  # spaces deleted: "a b" is one word
    encoder = PairEncoder(backend, max_seq_len=32)
    assert not encoder.cuts
    assert encoder.head(LONG_TEXTS["en"]) is None
    reference = Tokenizer.from_str(backend.to_str())
    reference.enable_truncation(32, strategy="only_first")
    assert encoder.encode([(LONG_TEXTS["en"], "kurz")]).ids[0] == reference.encode(LONG_TEXTS["en"], "kurz").ids


@pytest.mark.parametrize(
    "change",
    ["metaspace-without-split", "added-token-with-a-space", "no-pre-tokenizer"],
)
def test_a_tokenizer_that_may_join_words_is_never_cut(tokenizer: object, change: str) -> None:
    """A model that may merge across spaces (SentencePiece trained so) changes ids anywhere when its text is cut: the
    definition must say words split at spaces, whatever the probes show."""
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # type: ignore[attr-defined]
    if change == "metaspace-without-split":
        backend.pre_tokenizer = pre_tokenizers.Metaspace(split=False)
    elif change == "added-token-with-a-space":
        backend.add_tokens(["New York"])
    else:
        backend.pre_tokenizer = None
    assert not PairEncoder(backend, max_seq_len=32).cuts


async def test_the_backlog_admits_the_second_pass_for_what_it_reads(encoder: PairEncoder) -> None:
    """A text that must be read whole is charged its whole length: space padding cannot buy a cheap admission."""
    padded = ("Ein Satz. " + " " * 90_000, "kurz")
    pool = TokenizationPool(workers=1, max_pairs=64, max_chars=50_000)
    try:
        assert encoder.cost([padded]) <= 50_000 < encoder.cost([padded]) + len(padded[0])
        with pytest.raises(OverloadedError, match="tokenization backlog is full"):
            await pool.encode(encoder, [padded], truncate=True)
        spaced = (LONG_TEXTS["en"], "kurz")  # as long, settled by its head: admitted
        assert (await pool.encode(encoder, [spaced], truncate=True)).truncated == [True]
        assert (pool.waiting_pairs, pool.waiting_chars) == (0, 0)
    finally:
        pool.close()
