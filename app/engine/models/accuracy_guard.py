"""Accuracy guard: a variant run another way (ONNX, int8, fp16/bf16) must answer like torch fp32 before it serves.

The probe set is the project's own multilingual sample pairs (17 languages, 8 scripts, written for this project), so
the check covers every script a real checkpoint may see and needs no data set at start-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from app.engine.scheduler.runner import BatchRunner, probabilities_of
from app.engine.tokenization import PairEncoder
from app.samples import sample_pairs

PROBE_BATCH = 16


class Tolerances(Protocol):
    """How closely a candidate must agree: a variant's catalogue entry, or what its backend asks for."""

    @property
    def min_top1_agreement(self) -> float: ...

    @property
    def max_probability_diff(self) -> float: ...


def probe_sequences(encoder: PairEncoder) -> list[list[int]]:
    pairs = [(premise, hypothesis) for _, premise, hypothesis, _ in sample_pairs()]
    return encoder.encode(pairs, truncate=True).ids


def run_probe(runner: BatchRunner, sequences: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
    """Probabilities for every probe sequence, in batches small enough for any device."""
    return np.concatenate(
        [
            probabilities_of(runner.forward(sequences[start : start + PROBE_BATCH]))  # not the logits (issue #26)
            for start in range(0, len(sequences), PROBE_BATCH)
        ]
    )


@dataclass(frozen=True, slots=True)
class GuardReport:
    reference: str
    probe_pairs: int
    top1_agreement: float
    max_probability_diff: float
    min_top1_agreement: float
    max_probability_diff_allowed: float

    @property
    def passed(self) -> bool:
        return (
            self.top1_agreement >= self.min_top1_agreement
            and self.max_probability_diff <= self.max_probability_diff_allowed
        )

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def failure(self) -> str:
        return (
            f"accuracy guard failed against {self.reference} on {self.probe_pairs} probe pairs: top-1 agreement "
            f"{self.top1_agreement:.4f} (minimum {self.min_top1_agreement}), max probability difference "
            f"{self.max_probability_diff:.4f} (maximum {self.max_probability_diff_allowed}); refusing to serve it "
            "(a broken export or too lossy a precision; set accuracy_guard = false to serve it anyway)"
        )


def compare(
    tolerances: Tolerances,
    reference_name: str,
    reference: npt.NDArray[np.float32],
    candidate: npt.NDArray[np.float32],
) -> GuardReport:
    agreement = float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))
    difference = float(np.max(np.abs(reference.astype(np.float64) - candidate.astype(np.float64))))
    if not np.isfinite(candidate).all():
        difference = float("inf")
    return GuardReport(
        reference=reference_name,
        probe_pairs=len(reference),
        top1_agreement=round(agreement, 6),
        max_probability_diff=difference if not np.isfinite(difference) else round(difference, 6),
        min_top1_agreement=tolerances.min_top1_agreement,
        max_probability_diff_allowed=tolerances.max_probability_diff,
    )
