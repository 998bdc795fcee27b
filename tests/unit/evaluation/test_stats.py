from __future__ import annotations

import numpy as np
import pytest

from app.evaluation.stats import confusion_matrix, mcnemar_exact, paired_comparison, pareto_front


@pytest.mark.parametrize(
    ("only_first", "only_second", "expected"),
    [
        (0, 0, 1.0),
        (5, 5, 1.0),
        (0, 10, 2 * 0.5**10),  # the exact binomial tail, doubled
        (1, 9, 2 * (1 + 10) / 2**10),
        (30, 10, 0.002221),  # scipy.stats.binomtest(10, 40).pvalue
    ],
)
def test_mcnemar_exact_known_answers(only_first: int, only_second: int, expected: float) -> None:
    assert mcnemar_exact(only_first, only_second) == pytest.approx(expected, rel=1e-3)


def test_mcnemar_handles_large_counts_without_overflow() -> None:
    assert mcnemar_exact(20_000, 20_000) == pytest.approx(1.0)
    assert mcnemar_exact(10_000, 12_000) < 1e-20


def test_paired_comparison_on_a_constructed_case() -> None:
    gold = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0] * 10)
    baseline = gold.copy()
    baseline[:20] = (gold[:20] + 1) % 3  # baseline wrong on the first 20
    variant = gold.copy()  # variant right everywhere
    comparison = paired_comparison(variant, baseline, gold)
    assert comparison.only_variant_correct == 20
    assert comparison.only_baseline_correct == 0
    assert comparison.difference == pytest.approx(0.2)
    assert comparison.significant
    assert not paired_comparison(gold.copy(), gold.copy(), gold).significant


def test_confusion_matrix_rows_gold_columns_predicted() -> None:
    matrix = confusion_matrix(np.array([0, 0, 2, 1]), np.array([0, 1, 2, 2]))
    assert matrix.tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 1]]


def test_pareto_front_lower_latency_higher_accuracy() -> None:
    points = [(10.0, 0.70), (12.0, 0.80), (11.0, 0.60), (30.0, 0.80), (5.0, 0.50)]
    assert pareto_front(points) == [0, 1, 4]
