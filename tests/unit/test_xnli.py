from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.languages import XNLI_LANGUAGES
from app.xnli import XnliFormatError, language_files, read_xnli


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
    with pytest.raises(XnliFormatError, match=r"no pairs for languages \['sw'\]; found \['en', 'de'\]"):
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


XNLI1_HEADER = (
    "language\tgold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\t"
    "sentence1\tsentence2\tpromptID\tpairID\tgenre\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tsentence1_tokenized\t"
    "sentence2_tokenized\tmatch"
)


def xnli1_row(language: str, label: str, premise: str, hypothesis: str, pair_id: int) -> str:
    return "\t".join(
        [language, label, "( x )", "( y )", "(ROOT x)", "(ROOT y)", premise, hypothesis, "1", str(pair_id), "slate",
         label, label, label, label, label, premise, hypothesis, "True"]
    )  # fmt: skip


def write_xnli1(path: Path, extra: str = "") -> Path:
    rows = [
        xnli1_row("de", "entailment", "Der Zug kam pünktlich an.", "Der Zug war nicht zu spät.", 1),
        xnli1_row("en", "contradiction", 'The shop said "closed".', "The shop was open all night.", 2),
        xnli1_row("fr", "neutral", "Elle lit un livre.", "Le livre est un roman policier.", 3),
        xnli1_row("en", "neutral", "Two cats sleep on the sofa.", "The cats are old.", 4),
    ]
    path.write_text("\n".join([XNLI1_HEADER, *rows]) + "\n" + extra, encoding="utf-8")
    return path


def test_reads_the_xnli_1_0_distribution_file(tmp_path: Path) -> None:
    path = write_xnli1(tmp_path / "xnli.test.tsv")
    pairs = read_xnli(path)
    assert [(pair.language, pair.label) for pair in pairs] == [
        ("en", "contradiction"), ("en", "neutral"), ("fr", "neutral"), ("de", "entailment"),
    ]  # fmt: skip
    assert pairs[0].premise == 'The shop said "closed".'  # sentence1, not a parse column; quotes are text
    assert pairs[0].hypothesis == "The shop was open all night."
    assert read_xnli(tmp_path, ["de", "en"], limit_per_language=1) == [pairs[3], pairs[0]]  # the folder holding it


def test_xnli_1_0_errors_name_the_line_and_the_columns(tmp_path: Path) -> None:
    path = write_xnli1(tmp_path / "xnli.dev.tsv", extra=xnli1_row("sw", "maybe", "A.", "B.", 5) + "\n")
    with pytest.raises(XnliFormatError, match=r"xnli.dev.tsv:6: unknown label 'maybe'"):
        read_xnli(path)
    write_xnli1(tmp_path / "xnli.test.tsv")
    with pytest.raises(XnliFormatError, match=r"holds xnli.dev.tsv, xnli.test.tsv; pass the file to use"):
        read_xnli(tmp_path)
    short = tmp_path / "short.tsv"
    short.write_text("language\tgold_label\tsentence1\tsentence2\nen\tneutral\tonly one\n", encoding="utf-8")
    with pytest.raises(XnliFormatError, match=r"short.tsv:2: 3 columns, the header names 4"):
        read_xnli(short)


def test_reads_hugging_face_json_lines(tmp_path: Path) -> None:
    german = tmp_path / "xnli-de-validation.jsonl"  # the language comes from the file name
    german.write_text(
        '{"premise": "Es regnet seit Stunden.", "hypothesis": "Die Straße ist nass.", "label": 0}\n\n'
        '{"premise": "Es regnet seit Stunden.", "hypothesis": "Die Sonne scheint.", "label": 2}\n',
        encoding="utf-8",
    )
    mixed = tmp_path / "export.jsonl"  # a language field per record
    mixed.write_text(
        '{"premise": "Il neige.", "hypothesis": "Il fait froid.", "label": 1, "language": "fr"}\n'
        '{"premise": "Kar yağıyor.", "hypothesis": "Hava soğuk.", "label": 1, "language": "tr"}\n',
        encoding="utf-8",
    )
    pairs = read_xnli(tmp_path)
    assert [(pair.language, pair.label) for pair in pairs] == [
        ("fr", "neutral"), ("de", "entailment"), ("de", "contradiction"), ("tr", "neutral"),
    ]  # fmt: skip
    assert read_xnli(german, limit_per_language=1) == [pairs[1]]
    assert pairs[1].hypothesis == "Die Straße ist nass."


def test_expands_the_all_languages_configuration(tmp_path: Path) -> None:
    record = {
        "premise": {"de": "Der Hund bellt.", "en": "The dog barks.", "fr": "Le chien aboie."},
        "hypothesis": {"language": ["en", "fr", "de"], "translation": ["An animal is loud.", "Un animal crie.",
                                                                        "Ein Tier ist laut."]},
        "label": 0,
    }  # fmt: skip
    path = tmp_path / "all_languages.jsonl"
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    pairs = read_xnli(path)
    assert [(pair.language, pair.premise, pair.hypothesis) for pair in pairs] == [
        ("en", "The dog barks.", "An animal is loud."),
        ("fr", "Le chien aboie.", "Un animal crie."),
        ("de", "Der Hund bellt.", "Ein Tier ist laut."),
    ]
    assert {pair.label for pair in pairs} == {"entailment"}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("de.jsonl", '{"premise": "a", "hypothesis": "b", "label": 3}\n', r"de.jsonl:1: label 3 is not 0, 1 or 2"),
        ("de.jsonl", '{"premise": "a", "hypothesis": "b", "label": true}\n', r"label True is not 0, 1 or 2"),
        ("de.jsonl", '{"premise": "a", "label": 1}\n', r"a record needs premise, hypothesis and label"),
        ("de.jsonl", '{"premise": "a", "hypothesis": "b", "label": 1}\n{oops\n', r"de.jsonl:2: not a JSON object"),
        ("data.jsonl", '{"premise": "a", "hypothesis": "b", "label": 1}\n', r"data.jsonl:1: no language"),
    ],
)
def test_json_lines_errors(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(XnliFormatError, match=message):
        read_xnli(tmp_path / name)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("pairs.csv", "premise,hypothesis,label\nA dog.,An animal.,entailment\n"),
        ("notes.tsv", "just\ttwo\n"),
        ("empty.tsv", ""),
    ],
)
def test_unknown_formats_get_one_error_naming_what_is_expected(tmp_path: Path, name: str, content: str) -> None:
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(XnliFormatError, match="not a format this reads; expected one of: a folder of per-language"):
        read_xnli(tmp_path / name)
    with pytest.raises(XnliFormatError, match="no XNLI-format files; expected one of") as caught:
        read_xnli(tmp_path)
    assert "xnli.dev.tsv" in str(caught.value)
    assert "label 0/1/2" in str(caught.value)
    with pytest.raises(XnliFormatError, match="no such file or folder"):
        read_xnli(tmp_path / "absent")


def test_a_single_per_language_file(tmp_path: Path) -> None:
    write_folder(tmp_path)
    assert [pair.language for pair in read_xnli(tmp_path / "dev-de.tsv")] == ["de", "de"]
