"""Where load-test payloads come from: the multilingual sample shipped in loadtests/data, or an XNLI-format folder."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from app.xnli import LabelledPair, read_xnli

SAMPLE = Path(__file__).resolve().parent / "data" / "pairs.tsv"


def read_sample(path: Path = SAMPLE, languages: list[str] | None = None) -> list[LabelledPair]:
    """Rows ``language, premise, hypothesis, label`` written for this project; `#` lines are comments."""
    pairs = []
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if not row or row[0].startswith("#"):
                continue
            language, premise, hypothesis, label = row
            if languages is None or language in languages:
                pairs.append(LabelledPair(language, premise, hypothesis, label))
    if not pairs:
        raise ValueError(f"{path}: no pairs for languages {languages}")
    return pairs


def load_pairs(xnli_dir: str | None = None, languages: str | None = None, seed: int = 0) -> list[LabelledPair]:
    """The payload pool, shuffled so every user sees languages and lengths mixed."""
    chosen = [language.strip() for language in languages.split(",") if language.strip()] if languages else None
    pairs = read_xnli(Path(xnli_dir), chosen) if xnli_dir else read_sample(languages=chosen)
    random.Random(seed).shuffle(pairs)
    return pairs
