"""Request and response bodies of the HTTP API (also what OpenAPI at /docs shows)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from app.engine.tasks.zero_shot import TEMPLATE_PATTERN  # issue #26
from app.service.prediction import (
    DEFAULT_PRIORITY,
    LANGUAGE_MAX_CHARS,
    LANGUAGE_MIN_CHARS,
    MAX_TIMEOUT_MS,
    ClientPriority,
)
from app.service.texts import CONTENT_PATTERN, MAX_TEXT_CHARS
from app.service.variants import VariantInfo

# One rule for every protocol (app.service.texts): the schema's pattern is the validator's, read alike by every engine.
Text = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_TEXT_CHARS,
        pattern=CONTENT_PATTERN,
        description="Text with at least one character that is not white space (ECMAScript's or Unicode's).",
    ),
]


class Pair(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    premise: Text
    hypothesis: Text


class _PredictOptions(BaseModel):
    # strict: `"truncate": 1` or `"premise": 5` is an error, exactly as the published schema says.
    model_config = ConfigDict(extra="forbid", strict=True)

    truncate: bool = Field(
        True, description="Cut the premise of pairs longer than the variant's max_seq_len; false answers 422 instead."
    )
    timeout_ms: float | None = Field(
        None,
        gt=0,
        le=MAX_TIMEOUT_MS,
        description="Deadline for this request; may only shorten the server's request timeout. Past it: 503.",
    )
    priority: ClientPriority = Field(
        DEFAULT_PRIORITY,
        description="batch: bulk scoring that runs only when no interactive pair waits, and never delays interactive "
        "requests by more than one short batch.",
    )
    language: str | None = Field(
        None,
        min_length=LANGUAGE_MIN_CHARS,
        max_length=LANGUAGE_MAX_CHARS,
        description="ISO 639-1 code of the pairs' language (e.g. fr, zh); labels the prediction and shadow counters. "
        "The 15 XNLI languages are counted by name, any other code as `other`.",
    )


class PairBody(_PredictOptions):
    """One pair."""

    premise: Text
    hypothesis: Text

    def pairs(self) -> list[tuple[str, str]]:
        return [(self.premise, self.hypothesis)]


class PairsBody(_PredictOptions):
    """Several pairs, answered in order."""

    inputs: list[Pair] = Field(min_length=1)

    def pairs(self) -> list[tuple[str, str]]:
        return [(pair.premise, pair.hypothesis) for pair in self.inputs]


class _VariantChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    variant: str | None = Field(
        None, min_length=1, max_length=200, description="Catalogue variant; the catalogue's default_variant if omitted."
    )


class PairRequest(PairBody, _VariantChoice):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"premise": "Der Zug kam pünktlich an.", "hypothesis": "Der Zug war spät.", "variant": "xlmr-mnli"}
            ]
        }
    )


class PairsRequest(PairsBody, _VariantChoice):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "inputs": [
                        {"premise": "El niño juega en el parque.", "hypothesis": "Un niño está afuera."},
                        {"premise": "这家书店每天晚上十点关门。", "hypothesis": "书店晚上营业。"},
                    ]
                }
            ]
        }
    )


def _form(value: object) -> str:
    """Route a body to the batch form when it has `inputs`, else to the single-pair form (clear errors for both)."""
    return "pairs" if isinstance(value, dict) and "inputs" in value else "pair"


PredictRequest = Annotated[
    Annotated[PairRequest, Tag("pair")] | Annotated[PairsRequest, Tag("pairs")], Discriminator(_form)
]
"""Body of POST /predict: one pair (premise + hypothesis) or several (inputs); never both."""

VariantPredictRequest = Annotated[
    Annotated[PairBody, Tag("pair")] | Annotated[PairsBody, Tag("pairs")], Discriminator(_form)
]
"""Body of POST /variants/{name}/predict: as /predict, without `variant` (the path names it)."""


class Scores(BaseModel):
    entailment: float
    neutral: float
    contradiction: float


class Prediction(BaseModel):
    label: str = Field(description="entailment, neutral or contradiction")
    scores: Scores
    truncated: bool = Field(description="True when the premise was cut to fit max_seq_len.")


class PredictResponse(BaseModel):
    variant: str
    predictions: list[Prediction]


class ErrorDetail(BaseModel):
    type: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class VariantList(BaseModel):
    default_variant: str
    notice: str | None = Field(None, description="Set when any served variant has untrained demo weights.")
    variants: list[VariantInfo]


class HealthStatus(BaseModel):
    status: str
    variants: dict[str, str] | None = None


# --- issue #26: zero-shot classification (POST /zero-shot, POST /variants/{name}/zero-shot) ------------------------
# The body's shape only; the rules every transport shares (duplicate labels, texts x labels within
# max_pairs_per_request) are app.service.zero_shot's, answered 422 / 413 like /predict's.

Template = Annotated[
    str,
    Field(
        min_length=2,
        max_length=MAX_TEXT_CHARS,
        pattern=TEMPLATE_PATTERN,
        description="`{}` exactly once, where the label goes, and no other brace.",
    ),
]


class _ZeroShotOptions(_PredictOptions):
    candidate_labels: list[Text] = Field(
        min_length=1,
        description="The labels to score, each filled into the template as one NLI hypothesis; no label twice.",
        json_schema_extra={"uniqueItems": True},  # checked by app.service.zero_shot (422)
    )
    hypothesis_template: Template | dict[Annotated[str, Field(min_length=1, max_length=35)], Template] | None = Field(
        None,
        description="`{}` marks where a label goes (exactly once). A string, or a template per language code (the "
        "entry for `language` is used). Without one: the variant's catalogue template for `language`, else the "
        "built-in default for `language`, else English's `This example is {}.` (transformers' default).",
    )
    multi_label: bool = Field(
        False,
        description="false: scores sum to 1 over the labels (softmax of their entailment logits); true: each label "
        "scored on its own (softmax over its contradiction and entailment logits).",
    )


class ZeroShotTextBody(_ZeroShotOptions):
    """One text, scored against every candidate label."""

    text: Text

    def all_texts(self) -> list[str]:
        return [self.text]


class ZeroShotTextsBody(_ZeroShotOptions):
    """Several texts, each scored against every candidate label, answered in order."""

    texts: list[Text] = Field(min_length=1)

    def all_texts(self) -> list[str]:
        return self.texts


class ZeroShotTextRequest(ZeroShotTextBody, _VariantChoice):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "text": "Die Mannschaft gewann das Finale in der Verlängerung.",
                    "candidate_labels": ["sport", "technology", "politics"],
                    "hypothesis_template": "This example is about {}.",
                }
            ]
        }
    )


class ZeroShotTextsRequest(ZeroShotTextsBody, _VariantChoice):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "texts": ["Die Mannschaft gewann das Finale in der Verlängerung.", "新的手机电池可以用两天。"],
                    "candidate_labels": ["sport", "technology", "politics"],
                    "multi_label": False,
                }
            ]
        }
    )


def _zero_shot_form(value: object) -> str:
    """Route a body to the several-texts form when it has `texts`, else to the one-text form (clear errors for both:
    a body with both has an extra field, one with neither lacks `text`)."""
    return "texts" if isinstance(value, dict) and "texts" in value else "text"


ZeroShotRequest = Annotated[
    Annotated[ZeroShotTextRequest, Tag("text")] | Annotated[ZeroShotTextsRequest, Tag("texts")],
    Discriminator(_zero_shot_form),
]
"""Body of POST /zero-shot: one text (`text`) or several (`texts`); never both."""

ZeroShotBody = Annotated[
    Annotated[ZeroShotTextBody, Tag("text")] | Annotated[ZeroShotTextsBody, Tag("texts")],
    Discriminator(_zero_shot_form),
]
"""Body of POST /variants/{name}/zero-shot: as /zero-shot, without `variant` (the path names it)."""


class ZeroShotClassification(BaseModel):
    sequence: str = Field(description="The text, as sent.")
    labels: list[str] = Field(description="The candidate labels, best score first.")
    scores: list[float] = Field(description="Each label's score, in the order of `labels`.")
    truncated: bool = Field(description="True when the text was cut to fit max_seq_len in any of its pairs.")


class ZeroShotResponse(BaseModel):
    variant: str
    hypothesis_template: str = Field(description="The template the labels were filled into.")
    multi_label: bool
    results: list[ZeroShotClassification] = Field(description="One per text, in order.")


# --- end of issue #26 block ------------------------------------------------------------------------------------------
