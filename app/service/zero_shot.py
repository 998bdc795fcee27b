"""Zero-shot classification for every transport (issue #26): checks a typed :class:`ZeroShotQuery`, routes it to a
variant, chooses its template (request > catalogue > default for the language > English), builds the texts x labels
pairs and hands them to the one prediction path (``PredictionService.predict``: same admission, deadlines,
priorities, shadows and metrics as /predict, under its own ``endpoint`` label), then recombines the answered
logits into per-text label scores (``app.engine.tasks.zero_shot``).

Transports parse their wire into a query, call :func:`plan`, hand ``plan.query`` to the service (HTTP through
``answer_prediction``, so that disconnects, errors and timing headers are /predict's) and render
:meth:`ZeroShotPlan.classify`'s answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from app.engine.contract import EngineResult
from app.engine.tasks.zero_shot import (
    Classification,
    choose_template,
    classify,
    hypotheses,
    template_problem,
)
from app.service.errors import InvalidQueryError, TooManyPairsError
from app.service.prediction import PredictionQuery, PredictionService
from app.service.texts import text_problem

ENDPOINT = "zero_shot"  # xnli_request_duration_seconds' endpoint label of POST /zero-shot
VARIANT_ENDPOINT = "variant_zero_shot"  # ... of POST /variants/{name}/zero-shot
OIP_ENDPOINT = "v2_infer"  # the protocol's infer, whichever task it carries


class TooManyZeroShotPairsError(TooManyPairsError):
    """texts x labels pairs over ``max_pairs_per_request``: the same kind (413) as too many pairs, naming both."""

    def __init__(self, texts: int, labels: int, limit: int) -> None:
        self.texts = texts
        self.labels = labels
        self.count = texts * labels
        self.limit = limit
        ValueError.__init__(
            self,
            f"{texts} texts x {labels} candidate labels = {texts * labels} pairs in one request; the limit is "
            f"max_pairs_per_request={limit} (send fewer texts or labels per request)",
        )


class ZeroShotTooLargeError(TooManyPairsError):
    """The pairs' text, once each text is repeated per label (and each hypothesis per text), over what one request may
    carry: a 413 like too many pairs. Without it, a body far under the body limit could make the tokenizers read
    the same long text once per label (its cost multiplied by the labels), or ask for more than the tokenizing
    backlog can ever hold, which would be refused as overload (429, retry) although no retry could succeed."""

    def __init__(self, characters: int, limit: int) -> None:
        self.count = characters
        self.limit = limit
        ValueError.__init__(
            self,
            f"texts x candidate labels expand to {characters} characters of pairs (each text is paired with every "
            f"label's hypothesis); one request may carry at most {limit}, the body limit (XNLI_SERVE_MAX_BODY_BYTES): "
            "send shorter texts, fewer labels, or fewer texts per request",
        )


@dataclass(frozen=True, slots=True)
class ZeroShotQuery:
    """What every protocol asks of a zero-shot classification, once parsed from its wire format."""

    texts: Sequence[str]
    candidate_labels: Sequence[str]
    hypothesis_template: str | Mapping[str, str] | None = None  # a template, or one per language code
    multi_label: bool = False
    variant: str | None = None
    routing_key: str | None = None
    truncate: bool = True
    timeout_s: float | None = None
    priority: str = "interactive"
    language: str | None = None

    def validate(self, max_pairs: int) -> None:
        """The rules a schema may not have said (or that another wire cannot say): InvalidQueryError (422), or
        TooManyZeroShotPairsError (413) before any pair is built."""
        if not self.texts:
            raise InvalidQueryError("no texts to classify")
        if not self.candidate_labels:
            raise InvalidQueryError("candidate_labels is empty: give at least one label")
        for index, text in enumerate(self.texts):
            problem = text_problem(text)
            if problem is not None:
                raise InvalidQueryError(f"text {index} {problem}")
        seen: dict[str, int] = {}
        for index, label in enumerate(self.candidate_labels):
            problem = text_problem(label)
            if problem is not None:
                raise InvalidQueryError(f"candidate label {index} {problem}")
            if label in seen:  # exact equality, as the schema's uniqueItems says
                raise InvalidQueryError(f"candidate label {index} ({label!r}) repeats label {seen[label]}")
            seen[label] = index
        templates = (
            {"": self.hypothesis_template}
            if isinstance(self.hypothesis_template, str)
            else dict(self.hypothesis_template or {})
        )
        for language, template in templates.items():
            problem = template_problem(template)
            if problem is not None:
                where = "hypothesis_template" if not language else f"hypothesis_template[{language!r}]"
                raise InvalidQueryError(f"{where} {problem}: {template!r}")
        if len(self.texts) * len(self.candidate_labels) > max_pairs:
            raise TooManyZeroShotPairsError(len(self.texts), len(self.candidate_labels), max_pairs)


@dataclass(frozen=True, slots=True)
class ZeroShotPlan:
    """A checked, routed query: the pairs to predict and how to read their answer."""

    query: PredictionQuery
    texts: Sequence[str]
    labels: Sequence[str]
    template: str
    multi_label: bool

    def classify(self, result: EngineResult) -> list[Classification]:
        if result.logits is None:  # only a hand-built result lacks them; the engine always answers them
            raise ValueError("the engine's result carries no logits")
        return classify(self.texts, self.labels, result.logits, result.truncated, self.multi_label)


def plan(service: PredictionService, query: ZeroShotQuery) -> ZeroShotPlan:
    """Check ``query``, route it once (the catalogue's templates are the routed variant's) and build its pairs:
    each text with each label's hypothesis, text-major (the pipeline's order). Raises InvalidQueryError,
    TooManyZeroShotPairsError, ZeroShotTooLargeError or UnknownVariantError, each answered like /predict's."""
    spec = service.engine.route(query.variant, query.routing_key).spec  # first, as /predict routes first
    query.validate(service.max_pairs_per_request)
    template = choose_template(query.hypothesis_template, spec.zero_shot_templates, query.language)
    filled = hypotheses(query.candidate_labels, template)
    limit = service.max_expanded_chars
    if limit is not None:  # before any pair is built
        expanded = sum(map(len, query.texts)) * len(filled) + sum(map(len, filled)) * len(query.texts)
        if expanded > limit:
            raise ZeroShotTooLargeError(expanded, limit)
    pairs = [(text, hypothesis) for text in query.texts for hypothesis in filled]
    prediction = PredictionQuery(
        pairs=pairs,
        variant=spec.name,  # routed here: the service finds this name again, the split does not choose twice
        truncate=query.truncate,
        timeout_s=query.timeout_s,
        priority=query.priority,
        language=query.language,
    )
    return ZeroShotPlan(prediction, query.texts, query.candidate_labels, template, query.multi_label)
