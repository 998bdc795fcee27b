from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer

from app.demo.build_store import DEMO_LINEUP, build_demo_store, catalogue_toml, sample_pairs
from app.engine.model_store import DEMO_MARKER
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
    assert (REPO_ROOT / "model_store" / "variants.toml").read_text(encoding="utf-8") == catalogue_toml()


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
    assert (tmp_path / "variants.toml").read_text(encoding="utf-8") == catalogue_toml()


def test_unknown_demo_variant_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown demo variants"):
        build_demo_store(tmp_path, variants=["ghost"])
