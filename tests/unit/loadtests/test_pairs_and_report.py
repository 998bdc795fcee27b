from __future__ import annotations

import numpy as np
import pytest

from loadtests.compare import LevelResult
from loadtests.pairs import SAMPLE, load_pairs, read_sample
from loadtests.report import bootstrap_median_difference, summary


def test_shipped_sample_covers_ten_languages_and_a_spread_of_lengths() -> None:
    pairs = read_sample()
    assert SAMPLE.resolve().name == "sample_pairs.tsv"  # one file, shared with the demo tokenizer
    assert len({pair.language for pair in pairs}) >= 10
    lengths = sorted(len(pair.premise) for pair in pairs)
    assert lengths[0] < 20
    assert lengths[-1] > 80


def test_language_filter_and_shuffle() -> None:
    pairs = load_pairs(languages="de,zh")
    assert {pair.language for pair in pairs} == {"de", "zh"}
    assert load_pairs(languages="de,zh", seed=1) != pairs or len(pairs) < 3


def test_bootstrap_finds_a_real_difference_and_not_a_fake_one() -> None:
    generator = np.random.default_rng(3)
    a = generator.normal(20.0, 2.0, 2000)
    same = generator.normal(20.0, 2.0, 2000)
    slower = generator.normal(23.0, 2.0, 2000)
    difference, low, high = bootstrap_median_difference(a, same)
    assert low <= 0.0 <= high
    assert abs(difference) < 0.5
    difference, low, high = bootstrap_median_difference(a, slower)
    assert 2.5 < low <= difference <= high < 3.5


def result(variant: str, offered: float, p50: float, failures: int = 0) -> LevelResult:
    return LevelResult(
        variant,
        "users",
        offered,
        100,
        failures,
        failures / 100,
        10.0,
        10.0,
        p50,
        p50,
        p50,
        p50 * 2,
        p50,
        1,
        1,
        1,
        0.1,
        1.0,
        0.1,
        {"base_model": "b", "dtype": "float32", "device": "cpu", "parameters": 1},
    )


@pytest.mark.parametrize("failures", [0, 5])
def test_summary_is_computed_from_the_numbers(failures: int) -> None:
    lines = summary([result("a", 1, 10), result("a", 8, 30, failures), result("b", 1, 11), result("b", 8, 25)], [])
    assert lines[0].startswith("At the highest load (8 users), the lowest median latency is b (25 ms")
    assert ("No request failed" in lines[1]) == (failures == 0)
