"""Accuracy, confusion matrices and paired significance tests for variants scored on the same pairs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from app.engine.tasks.nli import LABELS


def accuracy(predicted: npt.NDArray[np.int64], gold: npt.NDArray[np.int64]) -> float:
    return float(np.mean(predicted == gold)) if len(gold) else float("nan")


def confusion_matrix(predicted: npt.NDArray[np.int64], gold: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Rows: gold label, columns: predicted label, both in LABELS order."""
    matrix = np.zeros((len(LABELS), len(LABELS)), dtype=np.int64)
    np.add.at(matrix, (gold, predicted), 1)
    return matrix


def _log_binomial_pmf(k: int, n: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)


def mcnemar_exact(only_first_correct: int, only_second_correct: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pair counts (binomial test, p = 0.5)."""
    discordant = only_first_correct + only_second_correct
    if discordant == 0:
        return 1.0
    smaller = min(only_first_correct, only_second_correct)
    log_terms = [_log_binomial_pmf(k, discordant) for k in range(smaller + 1)]
    peak = max(log_terms)
    tail = math.exp(peak) * sum(math.exp(term - peak) for term in log_terms)
    return min(1.0, 2.0 * tail)


@dataclass(frozen=True)
class PairedComparison:
    difference: float  # accuracy(variant) - accuracy(baseline)
    p_value: float
    only_variant_correct: int
    only_baseline_correct: int

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05


def paired_comparison(
    variant: npt.NDArray[np.int64], baseline: npt.NDArray[np.int64], gold: npt.NDArray[np.int64]
) -> PairedComparison:
    """McNemar's test: only the pairs the two variants disagree on carry information."""
    variant_correct = variant == gold
    baseline_correct = baseline == gold
    only_variant = int(np.sum(variant_correct & ~baseline_correct))
    only_baseline = int(np.sum(~variant_correct & baseline_correct))
    return PairedComparison(
        accuracy(variant, gold) - accuracy(baseline, gold),
        mcnemar_exact(only_variant, only_baseline),
        only_variant,
        only_baseline,
    )


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (lower latency, higher accuracy)."""
    front = []
    for index, (latency, score) in enumerate(points):
        dominated = any(
            other_latency <= latency and other_score >= score and (other_latency, other_score) != (latency, score)
            for other_latency, other_score in points
        )
        if not dominated:
            front.append(index)
    return front
