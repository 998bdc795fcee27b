"""The transport-neutral zero-shot planning (issue #26): the routed variant's catalogue templates, the pairs in the
pipeline's order (text-major), and the query's rules before any pair is built."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.engine.models.catalogue import VariantSpec
from app.service.errors import InvalidQueryError, TooManyPairsError
from app.service.prediction import PredictionService
from app.service.zero_shot import TooManyZeroShotPairsError, ZeroShotQuery, ZeroShotTooLargeError, plan


@dataclass
class Routed:
    spec: VariantSpec


class OneVariant:
    """Routes every request to one spec: all plan() asks of the engine."""

    def __init__(self, spec: VariantSpec) -> None:
        self.spec = spec
        self.asked: list[tuple[str | None, str | None]] = []

    def route(self, variant: str | None, routing_key: str | None = None) -> Routed:
        self.asked.append((variant, routing_key))
        return Routed(self.spec)


def service(
    templates: dict[str, str] | None = None, max_pairs: int = 64, max_chars: int | None = None
) -> tuple[PredictionService, OneVariant]:
    spec = VariantSpec(name="routed", path=Path("/nowhere"), zero_shot_templates=templates or {})
    engine = OneVariant(spec)
    return PredictionService(engine, max_pairs, max_chars), engine  # type: ignore[arg-type]


def test_pairs_are_text_major_with_the_catalogue_template_for_the_language() -> None:
    handle, engine = service({"fr": "Il s'agit de {}."})
    query = ZeroShotQuery(["t1", "t2"], ["a", "b"], language="fr", routing_key="k", priority="batch")
    planned = plan(handle, query)
    assert engine.asked == [(None, "k")]  # routed once, by the split
    assert planned.template == "Il s'agit de {}."
    assert planned.query.variant == "routed"  # the service finds the routed name again
    assert planned.query.priority == "batch"
    assert planned.query.language == "fr"
    assert list(planned.query.pairs) == [
        ("t1", "Il s'agit de a."),
        ("t1", "Il s'agit de b."),
        ("t2", "Il s'agit de a."),
        ("t2", "Il s'agit de b."),
    ]


@pytest.mark.parametrize(
    ("requested", "language", "chosen"),
    [
        ("Sur {}.", "fr", "Sur {}."),
        ({"fr": "Requête {}."}, "fr", "Requête {}."),
        (None, "fr", "Catalogue {}."),
        (None, "ru", "Тема этого примера — {}."),
        (None, "pt", "This example is {}."),
    ],
    ids=["request", "request-per-language", "catalogue", "default-for-language", "english"],
)
def test_template_precedence_request_catalogue_default_english(requested: Any, language: str, chosen: str) -> None:
    handle, _ = service({"fr": "Catalogue {}."})
    planned = plan(handle, ZeroShotQuery(["t"], ["a"], hypothesis_template=requested, language=language))
    assert planned.template == chosen


def test_a_catalogue_template_must_hold_the_placeholder() -> None:
    with pytest.raises(ValueError, match=r"zero_shot_templates\['fr'\] must contain \{\} exactly once"):
        VariantSpec(name="v", path=Path("/nowhere"), zero_shot_templates={"fr": "sans"})


def test_too_many_pairs_names_texts_and_labels_and_is_the_too_many_pairs_kind() -> None:
    handle, _ = service(max_pairs=10)
    with pytest.raises(TooManyZeroShotPairsError, match=r"4 texts x 3 candidate labels = 12 pairs") as raised:
        plan(handle, ZeroShotQuery(["t"] * 4, ["a", "b", "c"]))
    assert isinstance(raised.value, TooManyPairsError)
    assert (raised.value.count, raised.value.limit) == (12, 10)


@pytest.mark.parametrize(
    ("texts", "labels", "template", "expanded"),
    [
        # 2 texts of 10 x 3 labels, plus 3 hypotheses "About a." (8) x 2 texts: 60 + 48 = 108
        (["0123456789"] * 2, ["a", "b", "c"], "About {}.", 108),
        # one text, a long template: the template's length counts once per label
        (["t"], ["a", "b"], "x" * 100 + "{}", 2 + 2 * 101),
    ],
)
def test_pairs_that_expand_past_the_body_limit_are_413_before_any_pair_is_built(
    texts: list[str], labels: list[str], template: str, expanded: int
) -> None:
    """The auditor's case: a text repeated per label is tokenized once per label, so a small body could cost many
    times what /predict's largest body costs, or exceed the tokenizing backlog and be refused as overload (429)."""
    handle, _ = service(max_chars=expanded - 1)
    with pytest.raises(ZeroShotTooLargeError, match=f"expand to {expanded} characters") as raised:
        plan(handle, ZeroShotQuery(texts, labels, hypothesis_template=template))
    assert isinstance(raised.value, TooManyPairsError)
    assert (raised.value.count, raised.value.limit) == (expanded, expanded - 1)
    at_the_limit, _ = service(max_chars=expanded)
    assert len(plan(at_the_limit, ZeroShotQuery(texts, labels, hypothesis_template=template)).query.pairs) == len(
        texts
    ) * len(labels)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (ZeroShotQuery([], ["a"]), "no texts"),
        (ZeroShotQuery(["t"], []), "candidate_labels is empty"),
        (ZeroShotQuery(["t"], ["a", "a"]), "repeats label 0"),
        (ZeroShotQuery(["t"], [""]), "candidate label 0 is empty"),
        (ZeroShotQuery([" "], ["a"]), "text 0 is empty"),
        (ZeroShotQuery(["t"], ["a"], hypothesis_template="{}{}"), "exactly once"),
    ],
)
def test_invalid_queries(query: ZeroShotQuery, message: str) -> None:
    handle, _ = service()
    with pytest.raises(InvalidQueryError, match=message):
        plan(handle, query)
