from __future__ import annotations

from pathlib import Path

import pytest

from app.xnli import XNLI_LANGUAGES, XnliFormatError, language_files, read_xnli


def write_folder(folder: Path) -> Path:
    (folder / "dev-de.tsv").write_text("Ein Satz.\tNoch ein Satz.\tentailment\nA.\tB.\tNeutral\n", encoding="utf-8")
    (folder / "dev-en.tsv").write_text('He said "hi".\tHe spoke.\tentailment\n', encoding="utf-8")
    (folder / "README.md").write_text("not data", encoding="utf-8")
    return folder


def test_reads_a_small_folder_in_xnli_order(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    assert list(language_files(folder)) == ["en", "de"]
    pairs = read_xnli(folder)
    assert [(pair.language, pair.label) for pair in pairs] == [
        ("en", "entailment"),
        ("de", "entailment"),
        ("de", "neutral"),
    ]
    assert pairs[0].premise == 'He said "hi".'  # quotes are text, not CSV quoting
    assert [pair.language for pair in read_xnli(folder, ["de"], limit_per_language=1)] == ["de"]


@pytest.mark.parametrize(
    ("content", "message"),
    [("only\ttwo\n", "expected 3 tab-separated columns"), ("a\tb\tmaybe\n", "unknown label 'maybe'")],
)
def test_malformed_rows_are_reported_with_their_line(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "dev-fr.tsv").write_text("a\tb\tcontradiction\n" + content, encoding="utf-8")
    with pytest.raises(XnliFormatError, match=rf"dev-fr.tsv:2: {message}"):
        read_xnli(tmp_path)


def test_missing_language_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(XnliFormatError, match="no XNLI-format"):
        read_xnli(tmp_path)
    write_folder(tmp_path)
    with pytest.raises(XnliFormatError, match=r"no file for languages \['sw'\]"):
        read_xnli(tmp_path, ["sw"])


def test_shared_xnli_dev_set(xnli_dir: Path) -> None:
    assert list(language_files(xnli_dir)) == list(XNLI_LANGUAGES)
    pairs = read_xnli(xnli_dir, ["en", "zh"])
    assert len(pairs) == 2 * 2490
    for language in ("en", "zh"):
        labels = [pair.label for pair in pairs if pair.language == language]
        assert {label: labels.count(label) for label in set(labels)} == {
            "entailment": 830,
            "neutral": 830,
            "contradiction": 830,
        }
