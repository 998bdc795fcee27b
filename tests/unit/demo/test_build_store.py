from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoConfig, AutoTokenizer
from typer.testing import CliRunner

from app.cli import cli
from app.demo.build_store import Size, build_demo_store, demo_config
from app.demo.lineup import DEMO_LINEUP, SERVICE_ORDER, catalogue_toml
from app.demo.tokenizer import MIN_VOCAB_SIZE, save_demo_tokenizer
from app.engine.models.store import DEMO_MARKER
from app.samples import sample_pairs
from app.settings import CATALOGUE_FILE, DEFAULT_CATALOGUE
from app.xnli import XnliFormatError
from tests.conftest import REPO_ROOT

SCRIPTS = {  # a character range per script the demo tokenizer must cover
    "Latin": ("a", "z"),
    "Cyrillic": ("\u0400", "\u04ff"),
    "Greek": ("\u0370", "\u03ff"),
    "Arabic": ("\u0600", "\u06ff"),
    "Devanagari": ("\u0900", "\u097f"),
    "Thai": ("\u0e00", "\u0e7f"),
    "CJK": ("\u4e00", "\u9fff"),
    "Hangul": ("\uac00", "\ud7af"),
}


def test_committed_catalogue_is_what_the_builder_writes() -> None:
    assert (REPO_ROOT / DEFAULT_CATALOGUE).read_text(encoding="utf-8") == catalogue_toml()


def test_sample_pairs_cover_many_languages_and_scripts() -> None:
    rows = sample_pairs()
    assert len({language for language, *_ in rows}) >= 15
    assert {label for *_, label in rows} == {"entailment", "neutral", "contradiction"}
    text = "".join(premise + hypothesis for _, premise, hypothesis, _ in rows)
    for script, (low, high) in SCRIPTS.items():
        assert any(low <= char <= high for char in text), script


@pytest.mark.parametrize("variant", DEMO_LINEUP, ids=lambda variant: variant.name)
def test_demo_checkpoints_are_real_xlmr_marked_untrained(demo_store: Path, variant: object) -> None:
    folder = demo_store / variant.name  # type: ignore[attr-defined]
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    assert config.model_type == "xlm-roberta"
    assert config.architectures == ["XLMRobertaForSequenceClassification"]
    assert tuple(config.id2label[index] for index in range(3)) == variant.label_order  # type: ignore[attr-defined]
    marker = json.loads((folder / DEMO_MARKER).read_text(encoding="utf-8"))
    assert marker["untrained"] is True


def test_tokenizer_covers_every_script_without_unknown_tokens(demo_store: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(demo_store / "xlmr-mnli", local_files_only=True)
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    for _, premise, hypothesis, _ in sample_pairs():
        ids = tokenizer(premise, hypothesis)["input_ids"]
        assert tokenizer.unk_token_id not in ids, premise
        assert ids[0] == 0
        assert ids[-1] == 2


def test_existing_checkpoints_are_kept_unless_forced(demo_store: Path, tmp_path: Path) -> None:
    assert build_demo_store(demo_store) == []
    made = build_demo_store(tmp_path, variants=["xlmr-mnli"])
    assert made == [tmp_path / "xlmr-mnli"]
    assert (tmp_path / CATALOGUE_FILE).read_text(encoding="utf-8") == catalogue_toml()


def test_unknown_demo_variant_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown demo variants"):
        build_demo_store(tmp_path, variants=["ghost"])


# Our own sentences in XNLI's layout (premise, hypothesis, label; one dev-LANG.tsv per language). "Zwetschgenkuchen"
# and "栗子蛋糕" recur so often that a tokenizer trained on this corpus keeps each as one piece; the shipped sample
# pairs never use them.
CORPUS = {
    "de": [
        ("Oma backt sonntags einen Zwetschgenkuchen.", "Am Sonntag gibt es Zwetschgenkuchen."),
        ("Der Zwetschgenkuchen ist noch warm.", "Niemand mag Zwetschgenkuchen."),
        ("Im Herbst gibt es beim Bäcker Zwetschgenkuchen.", "Der Bäcker verkauft Zwetschgenkuchen."),
        ("Zwetschgenkuchen schmeckt mit Sahne am besten.", "Zwetschgenkuchen wird ohne Sahne gegessen."),
    ],
    "zh": [
        ("妈妈做了一个栗子蛋糕。", "家里有栗子蛋糕。"),
        ("栗子蛋糕卖完了。", "店里还有很多栗子蛋糕。"),
        ("我们在秋天吃栗子蛋糕。", "栗子蛋糕是秋天的点心。"),
    ],
    "en": [
        ("The ferry leaves the harbour at dawn.", "The boat departs early."),
        ("She repaired the bicycle herself.", "Someone else fixed her bicycle."),
    ],
}
LABEL_CYCLE = ("entailment", "neutral", "contradiction")


def write_corpus(folder: Path, repeat: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for language, rows in CORPUS.items():
        lines = [
            f"{premise}\t{hypothesis}\t{LABEL_CYCLE[index % 3]}"
            for index, (premise, hypothesis) in enumerate(rows * repeat)
        ]
        (folder / f"dev-{language}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def corpus_store(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> Path:
    store = tmp_path_factory.mktemp("corpus_store")
    build_demo_store(store, variants=["xlmr-mnli"], tokenizer_corpus=corpus_dir, vocab_size=MIN_VOCAB_SIZE + 50)
    return store


@pytest.mark.parametrize(
    ("size", "layers", "hidden", "heads", "intermediate"),
    [("tiny", 2, 64, 4, 128), ("base", 12, 768, 12, 3072), ("large", 24, 1024, 16, 4096)],
)
def test_demo_config_has_each_sizes_encoder_shape(
    size: Size, layers: int, hidden: int, heads: int, intermediate: int
) -> None:
    config = demo_config(size, vocab_size=16000)
    assert (config.num_hidden_layers, config.hidden_size) == (layers, hidden)
    assert (config.num_attention_heads, config.intermediate_size) == (heads, intermediate)
    assert (config.vocab_size, config.pad_token_id, config.max_position_embeddings) == (16000, 1, 514)
    assert config.id2label == dict(enumerate(SERVICE_ORDER))


@pytest.mark.parametrize("size", ["huge", "xl"])
def test_unknown_size_is_refused(size: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown demo size"):
        demo_config(size, vocab_size=100)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown demo size"):
        build_demo_store(tmp_path, size=size)  # type: ignore[arg-type]


def test_corpus_tokenizer_learns_the_corpus_and_says_so(corpus_store: Path) -> None:
    folder = corpus_store / "xlmr-mnli"
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    marker = json.loads((folder / DEMO_MARKER).read_text(encoding="utf-8"))
    assert marker["tokenizer"]["trained_on"].startswith("corpus ")
    assert marker["tokenizer"]["vocab_size"] == len(tokenizer) <= MIN_VOCAB_SIZE + 50
    assert AutoConfig.from_pretrained(folder, local_files_only=True).vocab_size == len(tokenizer)
    for word in ("Zwetschgenkuchen", "栗子蛋糕"):  # one piece each (besides a lone word-start marker)
        assert [piece.lstrip("▁") for piece in tokenizer.tokenize(word) if piece != "▁"] == [word]
    for rows in CORPUS.values():
        for premise, hypothesis in rows:
            ids = tokenizer(premise, hypothesis)["input_ids"]
            assert tokenizer.unk_token_id not in ids
            assert (ids[0], ids[-1]) == (0, 2)


def test_sample_tokenizer_is_the_default_and_says_so(demo_store: Path) -> None:
    marker = json.loads((demo_store / "xlmr-mnli" / DEMO_MARKER).read_text(encoding="utf-8"))
    assert marker["tokenizer"]["trained_on"] == "sample pairs"
    tokenizer = AutoTokenizer.from_pretrained(demo_store / "xlmr-mnli", local_files_only=True)
    assert len(tokenizer.tokenize("Zwetschgenkuchen")) > 1


def test_tokenizer_from_a_checkpoint_is_reused_without_training(corpus_store: Path, tmp_path: Path) -> None:
    source = corpus_store / "xlmr-mnli"
    made = build_demo_store(tmp_path, variants=["xlmr-squad-mnli"], tokenizer_from=source)
    assert made == [tmp_path / "xlmr-squad-mnli"]
    reused = AutoTokenizer.from_pretrained(made[0], local_files_only=True)
    assert reused.get_vocab() == AutoTokenizer.from_pretrained(source, local_files_only=True).get_vocab()
    marker = json.loads((made[0] / DEMO_MARKER).read_text(encoding="utf-8"))
    assert marker["tokenizer"]["copied_from"] == str(source)
    assert marker["tokenizer"]["trained_on"].startswith("corpus ")


def test_a_saved_tokenizer_alone_serves_as_tokenizer_from(corpus_dir: Path, tmp_path: Path) -> None:
    saved = save_demo_tokenizer(tmp_path / "tokenizer", tokenizer_corpus=corpus_dir, vocab_size=MIN_VOCAB_SIZE + 50)
    assert not (saved / "config.json").exists()  # a tokenizer, no model
    made = build_demo_store(tmp_path / "store", variants=["xlmr-mnli"], tokenizer_from=saved)
    vocab = AutoTokenizer.from_pretrained(made[0], local_files_only=True).get_vocab()
    assert vocab == AutoTokenizer.from_pretrained(saved, local_files_only=True).get_vocab()
    assert AutoConfig.from_pretrained(made[0], local_files_only=True).vocab_size == len(vocab)
    marker = json.loads((made[0] / DEMO_MARKER).read_text(encoding="utf-8"))
    assert marker["tokenizer"]["trained_on"] == f"corpus {corpus_dir.resolve()}"
    assert marker["tokenizer"]["copied_from"] == str(saved)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tokenizer_corpus": Path("a"), "tokenizer_from": Path("b")}, "not both"),
        ({"vocab_size": MIN_VOCAB_SIZE - 1}, "too small"),
        ({"tokenizer_from": Path("b"), "vocab_size": 500}, "checkpoint's"),
    ],
)
def test_contradictory_tokenizer_options_are_refused(options: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        build_demo_store(tmp_path, variants=["xlmr-mnli"], **options)
    assert not (tmp_path / "xlmr-mnli").exists()


def test_corpus_without_xnli_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    with pytest.raises(XnliFormatError, match="no XNLI-format"):
        build_demo_store(tmp_path / "store", tokenizer_corpus=tmp_path / "corpus")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--size", "huge"], "--size must be one of"),
        (["--tokenizer-corpus", "{empty}"], "no XNLI-format"),
        (["--vocab-size", "3", "--variant", "xlmr-mnli"], "too small"),
        (["--variant", "ghost"], "unknown demo variants"),
    ],
)
def test_build_command_refuses_bad_options_with_a_message(arguments: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    arguments = [argument.format(empty=tmp_path / "empty") for argument in arguments]
    result = CliRunner().invoke(cli, ["build-demo-store", "--out", str(tmp_path / "store"), *arguments])
    assert result.exit_code == 2
    assert message in result.output
