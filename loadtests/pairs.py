"""Where load-test payloads come from: the project's own sample pairs (app.samples), or an XNLI-format folder."""

from __future__ import annotations

import random
from pathlib import Path

from app.samples import sample_pairs
from app.xnli import LabelledPair, read_xnli


def read_sample(languages: list[str] | None = None) -> list[LabelledPair]:
    """The project's own sample pairs (``app.samples``), optionally only some languages."""
    pairs = sample_pairs(languages)
    if not pairs:
        raise ValueError(f"the sample pairs hold none in languages {languages}")
    return pairs


def load_pairs(xnli_dir: str | None = None, languages: str | None = None, seed: int = 0) -> list[LabelledPair]:
    """The payload pool, shuffled so every user sees languages and lengths mixed."""
    chosen = [language.strip() for language in languages.split(",") if language.strip()] if languages else None
    pairs = read_xnli(Path(xnli_dir), chosen) if xnli_dir else read_sample(languages=chosen)
    random.Random(seed).shuffle(pairs)
    return pairs
