"""Read XNLI data in the layouts people have it in; every reader returns the same labelled pairs.

- a folder of per-language TSV files (``dev-LANG.tsv``, ``test-LANG.tsv`` or ``LANG.tsv``): premise, hypothesis,
  label, no header (the layout of the shared dev set);
- the official XNLI 1.0 distribution file (``xnli.dev.tsv`` / ``xnli.test.tsv``): one tab-separated file with a
  header; the ``language``, ``gold_label``, ``sentence1`` and ``sentence2`` columns are used;
- JSON lines exported from the Hugging Face ``xnli`` dataset: ``premise``, ``hypothesis``, integer ``label``
  (0/1/2 = entailment/neutral/contradiction), and a ``language`` field or a language code in the file name
  (``xnli-de-validation.jsonl``); rows of the ``all_languages`` configuration (premise per language, hypothesis
  ``language``/``translation`` lists) are expanded into one pair per language.

A file or a folder holding one of these can be given. Used by load tests, benchmarks and evaluation; the data set
itself stays outside the repository (CC BY-NC 4.0).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from app.engine.tasks.nli import LABELS
from app.languages import XNLI_LANGUAGES

# XNLI's usual language order (the paper's tables).
_FILE_NAME = re.compile(r"^(?:dev-|test-)?([a-z]{2,3})\.tsv$")
_XNLI1_NAME = re.compile(r"^xnli\.(?:dev|test)\.tsv$")
XNLI1_COLUMNS = ("language", "gold_label", "sentence1", "sentence2")
JSON_SUFFIXES = (".jsonl", ".json")

EXPECTED_FORMATS = (
    "expected one of: a folder of per-language TSV files (dev-en.tsv, test-de.tsv or en.tsv; columns premise, "
    "hypothesis, label; no header); the XNLI 1.0 file xnli.dev.tsv or xnli.test.tsv (tab-separated, header with "
    "language, gold_label, sentence1, sentence2); or Hugging Face xnli JSON lines (.jsonl; premise, hypothesis, "
    "label 0/1/2 = entailment/neutral/contradiction, and a language field or a language code in the file name)"
)


class LabelledPair(NamedTuple):
    language: str
    premise: str
    hypothesis: str
    label: str


class XnliFormatError(ValueError):
    pass


def language_files(folder: Path) -> dict[str, Path]:
    """Language code -> file of a per-language folder, in XNLI's order first, then any others alphabetically."""
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.tsv")):
        match = _FILE_NAME.match(path.name)
        if match:
            found.setdefault(match.group(1), path)
    return {language: found[language] for language in _xnli_order(found)}


def _xnli_order(languages: Iterable[str]) -> list[str]:
    present = set(languages)
    return [code for code in XNLI_LANGUAGES if code in present] + sorted(present - set(XNLI_LANGUAGES))


def _label(value: str, where: str) -> str:
    label = value.strip().lower()
    if label not in LABELS:
        raise XnliFormatError(f"{where}: unknown label {value!r} (expected one of {', '.join(LABELS)})")
    return label


def _tsv_rows(path: Path) -> Iterator[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        yield from csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)


def _per_language_file(path: Path, language: str) -> Iterator[LabelledPair]:
    for line_number, row in enumerate(_tsv_rows(path), start=1):
        if len(row) != 3:
            raise XnliFormatError(f"{path}:{line_number}: expected 3 tab-separated columns")
        premise, hypothesis, label = row
        yield LabelledPair(language, premise, hypothesis, _label(label, f"{path}:{line_number}"))


def _xnli1_file(path: Path) -> Iterator[LabelledPair]:
    rows = _tsv_rows(path)
    header = next(rows, [])
    missing = [column for column in XNLI1_COLUMNS if column not in header]
    if missing:
        raise XnliFormatError(f"{path}: XNLI 1.0 header lacks {missing}; {EXPECTED_FORMATS}")
    index = [header.index(column) for column in XNLI1_COLUMNS]
    for line_number, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) <= max(index):
            raise XnliFormatError(f"{path}:{line_number}: {len(row)} columns, the header names {len(header)}")
        language, label, premise, hypothesis = (row[i] for i in index)
        yield LabelledPair(language.strip(), premise, hypothesis, _label(label, f"{path}:{line_number}"))


def _language_in_name(path: Path) -> str | None:
    tokens = re.split(r"[^a-z]+", path.name.lower().removesuffix(path.suffix))
    found = [token for token in tokens if token in XNLI_LANGUAGES]
    return found[0] if len(found) == 1 else None


def _json_label(value: Any, where: str) -> str:
    if isinstance(value, bool):  # bool is an int in Python; never a label
        raise XnliFormatError(f"{where}: label {value!r} is not 0, 1 or 2")
    if isinstance(value, int):
        if value not in (0, 1, 2):
            raise XnliFormatError(f"{where}: label {value!r} is not 0, 1 or 2 (entailment, neutral, contradiction)")
        return LABELS[value]
    if isinstance(value, str):
        return _label(value, where)
    raise XnliFormatError(f"{where}: label {value!r} is not 0, 1 or 2")


def _json_lines_file(path: Path) -> Iterator[LabelledPair]:
    from_name = _language_in_name(path)
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise XnliFormatError(f"{where}: not a JSON object ({error.msg}); {EXPECTED_FORMATS}") from None
            if not isinstance(record, dict) or not {"premise", "hypothesis", "label"} <= set(record):
                raise XnliFormatError(f"{where}: a record needs premise, hypothesis and label; {EXPECTED_FORMATS}")
            label = _json_label(record["label"], where)
            premise, hypothesis = record["premise"], record["hypothesis"]
            if isinstance(premise, dict) and isinstance(hypothesis, dict):  # the all_languages configuration
                translations = dict(
                    zip(hypothesis.get("language", []), hypothesis.get("translation", []), strict=False)
                )
                for code in _xnli_order(set(premise) & set(translations)):
                    yield LabelledPair(code, str(premise[code]), str(translations[code]), label)
                continue
            language = record.get("language") or record.get("lang") or from_name
            if not isinstance(language, str) or not language:
                raise XnliFormatError(
                    f"{where}: no language: add a language field or put one language code in the file name "
                    "(e.g. xnli-de-validation.jsonl)"
                )
            if not isinstance(premise, str) or not isinstance(hypothesis, str):
                raise XnliFormatError(f"{where}: premise and hypothesis must be strings")
            yield LabelledPair(str(language), premise, hypothesis, label)


def _file_kind(path: Path) -> str | None:
    """'per-language', 'xnli1' or 'jsonl' from a file's name and first line; None when it is none of them."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        first = next((line for line in handle if line.strip()), "")
    if first.lstrip().startswith("{"):
        return "jsonl"
    columns = first.rstrip("\r\n").split("\t")
    if all(column in columns for column in XNLI1_COLUMNS):
        return "xnli1"
    if _FILE_NAME.match(path.name) and len(columns) == 3:
        return "per-language"
    return None


def _read_file(path: Path) -> Iterator[LabelledPair]:
    kind = _file_kind(path)
    if kind == "jsonl":
        return _json_lines_file(path)
    if kind == "xnli1":
        return _xnli1_file(path)
    if kind == "per-language":
        match = _FILE_NAME.match(path.name)
        assert match is not None
        return _per_language_file(path, match.group(1))
    raise XnliFormatError(f"{path}: not a format this reads; {EXPECTED_FORMATS}")


def _sources(path: Path, languages: list[str] | None) -> list[Path]:
    """The files of ``path`` to read: the file itself, or the one format a folder holds (of a per-language folder,
    only the languages asked for)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise XnliFormatError(f"{path}: no such file or folder; {EXPECTED_FORMATS}")
    per_language = language_files(path)
    if per_language:
        return [file for language, file in per_language.items() if languages is None or language in languages]
    official = sorted(candidate for candidate in path.glob("*.tsv") if _XNLI1_NAME.match(candidate.name))
    if len(official) > 1:
        names = ", ".join(candidate.name for candidate in official)
        raise XnliFormatError(f"{path}: holds {names}; pass the file to use, e.g. {official[0]}")
    if official:
        return official
    json_lines = sorted(candidate for candidate in path.iterdir() if candidate.suffix in JSON_SUFFIXES)
    if json_lines:
        return json_lines
    raise XnliFormatError(f"{path}: no XNLI-format files; {EXPECTED_FORMATS}")


def read_xnli(
    path: Path, languages: list[str] | None = None, limit_per_language: int | None = None
) -> list[LabelledPair]:
    """Every labelled pair of the chosen languages (all found when None) from a file or folder in any of the
    layouts above; languages in the order asked for (else XNLI's), file order kept within a language."""
    per_language: dict[str, list[LabelledPair]] = {}
    seen: set[str] = set(language_files(Path(path))) if Path(path).is_dir() else set()
    for source in _sources(Path(path), languages):
        for pair in _read_file(source):
            seen.add(pair.language)
            if languages is None or pair.language in languages:
                bucket = per_language.setdefault(pair.language, [])
                if limit_per_language is None or len(bucket) < limit_per_language:
                    bucket.append(pair)
    if not seen:
        raise XnliFormatError(f"{path}: no labelled pairs found; {EXPECTED_FORMATS}")
    chosen = languages or _xnli_order(per_language)
    missing = [language for language in chosen if language not in per_language]
    if missing:
        raise XnliFormatError(f"{path}: no pairs for languages {missing}; found {_xnli_order(seen)}")
    return [pair for language in chosen for pair in per_language[language]]
