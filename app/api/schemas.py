"""Request and response bodies of the HTTP API (also what OpenAPI at /docs shows)."""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain non-whitespace text")
    return value


Text = Annotated[str, Field(min_length=1, max_length=100_000), AfterValidator(_not_blank)]


class Pair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    premise: Text
    hypothesis: Text


class PredictRequest(BaseModel):
    """Either one pair (``premise`` + ``hypothesis``) or several (``inputs``); never both."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"premise": "Der Zug kam pünktlich an.", "hypothesis": "Der Zug war spät.", "variant": "xlmr-mnli"},
                {
                    "inputs": [
                        {"premise": "El niño juega en el parque.", "hypothesis": "Un niño está afuera."},
                        {"premise": "这家书店每天晚上十点关门。", "hypothesis": "书店晚上营业。"},
                    ]
                },
            ]
        },
    )

    premise: Text | None = None
    hypothesis: Text | None = None
    inputs: list[Pair] | None = Field(None, min_length=1)
    variant: str | None = Field(
        None, min_length=1, max_length=200, description="Catalogue variant; the catalogue's default_variant if omitted."
    )
    truncate: bool = Field(
        True, description="Cut the premise of pairs longer than the variant's max_seq_len; false answers 422 instead."
    )

    @model_validator(mode="after")
    def _exactly_one_form(self) -> Self:
        single = self.premise is not None or self.hypothesis is not None
        if single and self.inputs is not None:
            raise ValueError("send either premise/hypothesis or inputs, not both")
        if not single and self.inputs is None:
            raise ValueError("send premise and hypothesis, or inputs: a list of {premise, hypothesis}")
        if single and (self.premise is None or self.hypothesis is None):
            raise ValueError("premise and hypothesis must both be given")
        return self

    def pairs(self) -> list[tuple[str, str]]:
        if self.inputs is not None:
            return [(pair.premise, pair.hypothesis) for pair in self.inputs]
        assert self.premise is not None
        assert self.hypothesis is not None
        return [(self.premise, self.hypothesis)]


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


class VariantInfo(BaseModel):
    """Catalogue metadata and load state of one variant."""

    model_config = ConfigDict(extra="allow")

    name: str
    base_model: str
    intermediate_task: str
    description: str
    status: str
    device: str
    dtype: str
    parameters: int | None
    demo: bool
    untrained: bool


class VariantList(BaseModel):
    default_variant: str
    notice: str | None = Field(None, description="Set when any served variant has untrained demo weights.")
    variants: list[VariantInfo]


class HealthStatus(BaseModel):
    status: str
    variants: dict[str, str] | None = None
