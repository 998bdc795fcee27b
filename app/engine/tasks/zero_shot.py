"""Zero-shot classification over an NLI head (issue #26): a text and candidate labels become one (text, hypothesis)
pair per label, the hypothesis being a template with the label filled in; the head's logits of those pairs are
recombined into one score per label, as transformers' ``zero-shot-classification`` pipeline does:

- single-label: a softmax over the labels' *entailment* logits (the scores of a text sum to 1);
- multi-label (or a single candidate label, as the pipeline does): per label, a softmax over its (contradiction,
  entailment) logits, the entailment share being the label's score.

Pure NumPy over the engine's ``EngineResult.logits`` (float32, service label order): no transport, no engine call.
The template rule and the default templates live here so that the catalogue (``zero_shot_templates``) and every
transport check templates by one rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from app.engine.tasks.nli import LABELS

PLACEHOLDER = "{}"
ENTAILMENT = LABELS.index("entailment")
CONTRADICTION = LABELS.index("contradiction")

ENGLISH_TEMPLATE = "This example is {}."
"""The transformers pipeline's own default, so that a request without a template scores as the pipeline does."""

DEFAULT_TEMPLATES: Mapping[str, str] = {
    # Written for this project, not by native speakers of each language: "the topic of this example is {}" where the
    # language inflects a noun after "is about" (the label then stays in its dictionary form). Override per variant
    # in the catalogue (zero_shot_templates) or per request (hypothesis_template).
    "ar": "موضوع هذا المثال هو {}.",
    "bg": "Темата на този пример е {}.",
    "de": "Das Thema dieses Beispiels ist {}.",
    "el": "Το θέμα αυτού του παραδείγματος είναι {}.",
    "en": ENGLISH_TEMPLATE,
    "es": "El tema de este ejemplo es {}.",
    "fr": "Le thème de cet exemple est {}.",
    "hi": "इस उदाहरण का विषय {} है।",
    "ru": "Тема этого примера — {}.",
    "sw": "Mada ya mfano huu ni {}.",
    "th": "ตัวอย่างนี้เกี่ยวกับ{}",
    "tr": "Bu örneğin konusu {}.",
    "ur": "اس مثال کا موضوع {} ہے۔",
    "vi": "Chủ đề của ví dụ này là {}.",
    "zh": "这个例子的主题是{}。",
}


TEMPLATE_PATTERN = r"^[^{}]*\{\}[^{}]*$"
"""Exactly one ``{}`` and no other brace: the pipeline fills a template with ``str.format``, so any other brace would
be read as a field (or fail) there and not here. The HTTP schema publishes this pattern, read alike by every regex
engine."""
_TEMPLATE = re.compile(TEMPLATE_PATTERN)


def template_problem(template: str) -> str | None:
    """Why ``template`` cannot be filled with a label, or None."""
    if _TEMPLATE.fullmatch(template) is None:
        return "must contain {} exactly once and no other brace"
    return None


def fill(template: str, label: str) -> str:
    """The hypothesis for ``label``; equal to the pipeline's ``template.format(label)`` for every valid template."""
    return template.replace(PLACEHOLDER, label)


def language_keys(language: str | None) -> tuple[str, ...]:
    """The keys a template table is read with, most specific first: ``fr-CA`` -> ``fr-ca``, ``fr``; none -> ``en``
    (a request that names no language is scored as English is, by the pipeline's default)."""
    if language is None:
        return ("en",)
    code = language.strip().lower().replace("_", "-")
    primary = code.split("-", 1)[0]
    return (code, primary) if primary != code else (code,)


def choose_template(
    requested: str | Mapping[str, str] | None, catalogue: Mapping[str, str], language: str | None
) -> str:
    """The template a request is scored with: the request's own (a string, or its table's entry for the language),
    else the variant's catalogue entry for the language, else the default for the language, else English's."""
    keys = language_keys(language)
    if isinstance(requested, str):
        return requested
    for table in (requested or {}, catalogue, DEFAULT_TEMPLATES):
        for key in keys:
            found = table.get(key)
            if found is not None:
                return found
    return ENGLISH_TEMPLATE


def hypotheses(labels: Sequence[str], template: str) -> list[str]:
    return [fill(template, label) for label in labels]


@dataclass(frozen=True, slots=True)
class Classification:
    """One text's answer: its labels sorted by score, best first, and their scores (the pipeline's fields)."""

    sequence: str
    labels: list[str]
    scores: list[float]
    truncated: bool


def label_scores(logits: npt.NDArray[np.float32], label_count: int, multi_label: bool) -> npt.NDArray[np.float32]:
    """(texts, labels) scores from the logits of texts x labels pairs, text-major (the pairs' order)."""
    shaped = np.asarray(logits, dtype=np.float32).reshape(-1, label_count, len(LABELS))
    if multi_label or label_count == 1:
        chosen = shaped[..., [CONTRADICTION, ENTAILMENT]]
        scores = _softmax(chosen)[..., 1]
    else:
        scores = _softmax(shaped[..., ENTAILMENT])
    result: npt.NDArray[np.float32] = scores.astype(np.float32, copy=False)
    return result


def _softmax(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Over the last axis; shifted by the maximum so that large logits cannot overflow (the pipeline does not shift,
    which changes nothing else: the results agree to float32 rounding)."""
    exponentials = np.exp(values - values.max(axis=-1, keepdims=True))
    result: npt.NDArray[np.float32] = exponentials / exponentials.sum(axis=-1, keepdims=True)
    return result


def classify(
    texts: Sequence[str],
    labels: Sequence[str],
    logits: npt.NDArray[np.float32],
    truncated: Sequence[bool],
    multi_label: bool,
) -> list[Classification]:
    """Each text's labels sorted by score, best first; ties keep the pipeline's order (a reversed argsort)."""
    scores = label_scores(logits, len(labels), multi_label)
    answers: list[Classification] = []
    count = len(labels)
    for index, text in enumerate(texts):
        row = scores[index]
        order = row.argsort()[::-1]
        answers.append(
            Classification(
                text,
                [labels[position] for position in order.tolist()],
                row[order].tolist(),
                any(truncated[index * count : (index + 1) * count]),
            )
        )
    return answers
