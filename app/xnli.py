"""Read XNLI-format folders: one ``dev-LANG.tsv`` (or ``LANG.tsv``) per language, rows premise, hypothesis, label.

Used by load tests, benchmarks and evaluation; the data set itself stays outside the repository (CC BY-NC 4.0).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from app.engine.labels import LABELS

# XNLI's usual language order (the paper's tables).
XNLI_LANGUAGES = ("en", "fr", "es", "de", "el", "bg", "ru", "tr", "ar", "vi", "th", "zh", "hi", "sw", "ur")
_FILE_NAME = re.compile(r"^(?:dev-|test-)?([a-z]{2,3})\.tsv$")


@dataclass(frozen=True, slots=True)
class LabelledPair:
    language: str
    premise: str
    hypothesis: str
    label: str


class XnliFormatError(ValueError):
    pass


def language_files(folder: Path) -> dict[str, Path]:
    """Language code -> file, in XNLI's order first, then any others alphabetically."""
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.tsv")):
        match = _FILE_NAME.match(path.name)
        if match:
            found.setdefault(match.group(1), path)
    ordered = [language for language in XNLI_LANGUAGES if language in found]
    ordered += sorted(language for language in found if language not in XNLI_LANGUAGES)
    return {language: found[language] for language in ordered}


def read_xnli(
    folder: Path, languages: list[str] | None = None, limit_per_language: int | None = None
) -> list[LabelledPair]:
    """Every labelled pair of the chosen languages (all found when None), file order kept."""
    files = language_files(folder)
    if not files:
        raise XnliFormatError(f"{folder}: no XNLI-format .tsv files (expected e.g. dev-en.tsv)")
    chosen = languages or list(files)
    missing = [language for language in chosen if language not in files]
    if missing:
        raise XnliFormatError(f"{folder}: no file for languages {missing}; found {list(files)}")
    pairs: list[LabelledPair] = []
    for language in chosen:
        with files[language].open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            for line_number, row in enumerate(reader, start=1):
                if limit_per_language is not None and line_number > limit_per_language:
                    break
                if len(row) != 3:
                    raise XnliFormatError(f"{files[language]}:{line_number}: expected 3 tab-separated columns")
                premise, hypothesis, label = row
                label = label.strip().lower()
                if label not in LABELS:
                    raise XnliFormatError(f"{files[language]}:{line_number}: unknown label {row[2]!r}")
                pairs.append(LabelledPair(language, premise, hypothesis, label))
    return pairs
