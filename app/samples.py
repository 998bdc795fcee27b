"""The multilingual premise/hypothesis pairs written for this project (17 languages, 8 scripts; not XNLI data, whose
licence keeps it out of the repository). One reader for all that use them: the demo tokenizer and heads, the
accuracy guard's probes, load-test payloads and tests."""

from __future__ import annotations

from collections.abc import Collection
from importlib import resources

from app.xnli import LabelledPair

SAMPLE_PACKAGE = "app.demo"
SAMPLE_FILE = "sample_pairs.tsv"  # language, premise, hypothesis, label; `#` lines are comments


def sample_pairs(languages: Collection[str] | None = None) -> list[LabelledPair]:
    text = resources.files(SAMPLE_PACKAGE).joinpath(SAMPLE_FILE).read_text(encoding="utf-8")
    pairs = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            language, premise, hypothesis, label = line.split("\t")
            if languages is None or language in languages:
                pairs.append(LabelledPair(language, premise, hypothesis, label))
    return pairs
