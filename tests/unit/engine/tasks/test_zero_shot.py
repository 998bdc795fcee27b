"""The zero-shot recombination and template rules (issue #26), on logits made up for each case."""

from __future__ import annotations

import numpy as np
import pytest

from app.engine.tasks.zero_shot import (
    DEFAULT_TEMPLATES,
    ENGLISH_TEMPLATE,
    choose_template,
    classify,
    fill,
    label_scores,
    language_keys,
    template_problem,
)

XNLI_LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
# Two texts x three labels, columns (entailment, neutral, contradiction) as the engine answers them.
LOGITS = np.array(
    [[2.0, 0.0, -1.0], [0.5, 0.3, 0.1], [-1.0, 0.0, 3.0], [0.0, 0.0, 0.0], [1.0, 9.0, 1.0], [4.0, 0.0, 0.0]],
    dtype=np.float32,
)


def softmax(values: np.ndarray) -> np.ndarray:
    exponentials = np.exp(values - values.max(axis=-1, keepdims=True))
    result: np.ndarray = exponentials / exponentials.sum(axis=-1, keepdims=True)
    return result


def test_single_label_is_a_softmax_of_the_entailment_logits_across_labels() -> None:
    scores = label_scores(LOGITS, 3, multi_label=False)
    np.testing.assert_allclose(scores, softmax(np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 4.0]])), rtol=1e-6)


def test_multi_label_is_a_softmax_over_contradiction_and_entailment_per_label() -> None:
    """Neutral takes no part: label 2 of text 2 has a large neutral logit and the same score as one without it."""
    scores = label_scores(LOGITS, 3, multi_label=True)
    expected = softmax(LOGITS[:, [2, 0]].reshape(2, 3, 2))[..., 1]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert scores[1, 1] == pytest.approx(0.5)


def test_one_label_is_always_scored_multi_label() -> None:
    np.testing.assert_array_equal(label_scores(LOGITS[:2], 1, False), label_scores(LOGITS[:2], 1, True))


def test_large_logits_do_not_overflow() -> None:
    scores = label_scores(np.array([[800.0, 0, 0], [790.0, 0, 0]], dtype=np.float32), 2, False)
    assert np.isfinite(scores).all()


def test_classify_sorts_labels_best_first_and_marks_cut_texts() -> None:
    first, second = classify(["t1", "t2"], ["a", "b", "c"], LOGITS, [False, False, False, False, True, False], False)
    assert first.labels == ["a", "b", "c"]
    assert second.labels == ["c", "b", "a"]
    assert second.scores == sorted(second.scores, reverse=True)
    assert (first.truncated, second.truncated) == (False, True)


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("This example is {}.", None),
        ("{}", None),  # the label alone as the hypothesis: the pipeline takes it too
        ("no placeholder", "exactly once"),
        ("{} {}", "exactly once"),
        ("{label}", "exactly once"),
        ("about {} }", "exactly once"),
    ],
)
def test_template_rule(template: str, problem: str | None) -> None:
    found = template_problem(template)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_fill_equals_str_format_for_valid_templates() -> None:
    for template in DEFAULT_TEMPLATES.values():
        assert fill(template, "x") == template.format("x")


def test_a_default_template_for_each_xnli_language() -> None:
    assert sorted(DEFAULT_TEMPLATES) == sorted(XNLI_LANGUAGES)
    assert all(template_problem(template) is None for template in DEFAULT_TEMPLATES.values())
    assert DEFAULT_TEMPLATES["en"] == ENGLISH_TEMPLATE == "This example is {}."  # the pipeline's default


@pytest.mark.parametrize(
    ("language", "keys"),
    [(None, ("en",)), ("fr", ("fr",)), ("fr-CA", ("fr-ca", "fr")), ("PT_br", ("pt-br", "pt"))],
)
def test_language_keys(language: str | None, keys: tuple[str, ...]) -> None:
    assert language_keys(language) == keys


CATALOGUE = {"fr": "Catalogue : {}.", "pt-br": "Catálogo: {}."}


@pytest.mark.parametrize(
    ("requested", "language", "chosen"),
    [
        ("Request {}.", "fr", "Request {}."),  # the request's string wins over everything
        ({"fr": "Requête {}."}, "fr-CA", "Requête {}."),  # then its entry for the language (region falls back)
        ({"de": "Anfrage {}."}, "fr", "Catalogue : {}."),  # no entry for the language: the catalogue's
        (None, "pt-BR", "Catálogo: {}."),  # the catalogue's regional entry before its primary language
        (None, "pt", "This example is {}."),  # pt: neither catalogue nor default has one -> English
        (None, "de", DEFAULT_TEMPLATES["de"]),  # no catalogue entry: the built-in default for the language
        (None, None, "This example is {}."),  # no language: English
    ],
)
def test_template_precedence(requested: object, language: str | None, chosen: str) -> None:
    assert choose_template(requested, CATALOGUE, language) == chosen  # type: ignore[arg-type]
