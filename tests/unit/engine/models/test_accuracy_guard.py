from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.engine.models.accuracy_guard import compare
from app.engine.models.catalogue import VariantSpec

REFERENCE = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.4, 0.35, 0.25]], dtype=np.float32)


def spec(**guard: float) -> VariantSpec:
    return VariantSpec(name="v", path=Path("/x"), **guard)


@pytest.mark.parametrize(
    ("candidate", "agreement", "difference", "passed"),
    [
        pytest.param(REFERENCE, 1.0, 0.0, True, id="identical"),
        pytest.param(REFERENCE + [[0.05, -0.05, 0.0]] * 4, 1.0, 0.05, True, id="small-shift"),
        pytest.param(REFERENCE[:, [1, 0, 2]], 0.25, 0.7, False, id="labels-swapped"),
        pytest.param(
            np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.3, 0.45, 0.25]]), 0.75, 0.1, False
        ),
    ],
)
def test_guard_measures_agreement_and_largest_difference(
    candidate: np.ndarray, agreement: float, difference: float, passed: bool
) -> None:
    report = compare(spec(), "torch float32 on cpu", REFERENCE, candidate.astype(np.float32))
    assert report.top1_agreement == pytest.approx(agreement)
    assert report.max_probability_diff == pytest.approx(difference, abs=1e-6)
    assert report.passed is passed
    assert report.describe()["passed"] is passed


def test_tolerances_come_from_the_variant() -> None:
    shifted = (REFERENCE + [[0.2, -0.2, 0.0]] * 4).astype(np.float32)
    assert not compare(spec(), "ref", REFERENCE, shifted).passed
    assert compare(spec(max_probability_diff=0.25), "ref", REFERENCE, shifted).passed


def test_non_finite_output_fails() -> None:
    broken = REFERENCE.copy()
    broken[0, 0] = np.nan
    report = compare(spec(accuracy_guard=True), "ref", REFERENCE, broken)
    assert not report.passed
    assert "refusing to serve" in report.failure()
