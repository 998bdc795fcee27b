from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.samples import sample_pairs
from loadtests.measurements import LevelResult, Samples
from loadtests.pairs import load_pairs, read_sample
from loadtests.report import summary, verdict_sentence, write_report
from loadtests.stats import INTERLEAVED, Comparison


def test_shipped_sample_covers_ten_languages_and_a_spread_of_lengths() -> None:
    pairs = read_sample()
    assert pairs == sample_pairs()  # one file and one reader, shared with the demo tokenizer
    assert len({pair.language for pair in pairs}) >= 10
    lengths = sorted(len(pair.premise) for pair in pairs)
    assert lengths[0] < 20
    assert lengths[-1] > 80


def test_language_filter_and_shuffle() -> None:
    pairs = load_pairs(languages="de,zh")
    assert {pair.language for pair in pairs} == {"de", "zh"}
    assert load_pairs(languages="de,zh", seed=1) != pairs or len(pairs) < 3


def result(variant: str, offered: float, p50: float, failures: int = 0) -> LevelResult:
    return LevelResult(
        variant=variant, mode="users", offered=offered, design="interleaved", requests=100, failures=failures,
        error_rate=failures / 100, window_s=10.0, requests_per_s=10.0, pairs_per_s=10.0, share=0.5, p50_ms=p50,
        p90_ms=p50, p95_ms=p50, p99_ms=p50 * 2, mean_ms=p50, queue_ms=1, inference_ms=1, other_ms=1, queue_share=0.1,
        mean_batch_size=1.0, padding_ratio=0.1,
        metadata={"base_model": "b", "dtype": "float32", "device": "cpu", "parameters": 1},
    )  # fmt: skip


def verdict(b: str, word: str, difference: float = 0.1) -> Comparison:
    return Comparison(
        a="a", b=b, metric="p50_ms", level=8, verdict=word, difference=difference, ci_low=difference - 0.5,
        ci_high=difference + 0.5, relative=difference / 10, baseline=10.0, margin=0.5, blocks=24, confidence=0.975,
        design=INTERLEAVED,
    )  # fmt: skip


@pytest.mark.parametrize("failures", [0, 5])
def test_summary_is_computed_from_the_numbers(failures: int) -> None:
    lines = summary([result("a", 1, 10), result("a", 8, 30, failures), result("b", 1, 11), result("b", 8, 25)], [])
    assert lines[0].startswith("At the highest load (8 users), the lowest median latency is b (25.0 ms")
    assert ("No request failed" in lines[-1]) == (failures == 0)


def test_summary_counts_verdicts_and_flags_differences_between_same_shape_variants() -> None:
    comparisons = [verdict("b", "equivalent"), verdict("c", "slower", 3.0), verdict("d", "inconclusive")]
    results = [result(name, 8, 10) for name in "abcd"]
    lines = summary(results, comparisons)
    assert lines[1].startswith("3 verdicts: 1 equivalent (within +-5% of the first variant's level), 1 faster/slower")
    assert "each rests on 24 interleaved time blocks, with 97.5% intervals" in lines[1]
    assert "1 of 3 verdicts between variants of the same architecture" in lines[2]
    assert "c is slower than a in median latency: c - a = +3.00 ms (+30.0%; 97.5% CI +2.50 to +3.50 ms)" in lines[3]


@pytest.mark.parametrize(
    ("word", "phrase"),
    [("equivalent", "are equivalent"), ("slower", "is slower than"), ("inconclusive", "is inconclusive")],
)
def test_verdict_sentences(word: str, phrase: str) -> None:
    assert phrase in verdict_sentence(verdict("b", word))


def synthetic_samples(variants: list[str], seconds: float = 10.0) -> Samples:
    generator = np.random.default_rng(0)
    n = 600
    start = np.sort(generator.uniform(1000.0, 1000.0 + seconds, n))
    codes = generator.integers(0, len(variants), n)
    latency = generator.lognormal(3.0, 0.3, n) * (1 + 0.01 * (start - 1000))
    return Samples(
        variants, start, codes, latency, latency * 0.2, latency * 0.5, np.ones(n, dtype=bool),
        np.full(n, -1, dtype=np.int64), None, 2.0, [],
    )  # fmt: skip


@pytest.mark.parametrize("levels", [[8.0], [1.0, 8.0]])
def test_report_files_and_no_single_point_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, levels: list[float]
) -> None:
    import matplotlib.axes

    lines: list[int] = []
    original = matplotlib.axes.Axes.plot

    def plot(self: matplotlib.axes.Axes, *args: Any, **kwargs: Any) -> Any:
        drawn = original(self, *args, **kwargs)
        lines.extend(np.size(line.get_xdata()) for line in drawn)
        return drawn

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    variants = ["a", "b"]
    results = [result(variant, level, 10 + level) for variant in variants for level in levels]
    samples = {level: synthetic_samples(variants) for level in levels}
    comparisons = [verdict("b", "equivalent")]
    write_report(results, comparisons, samples, tmp_path, {"duration": 10})
    names = ["latency_ecdf.png", "latency_over_time.png", "latency.png", "throughput.png", "breakdown.png"]
    for name in [*names, "verdicts.png", "report.md", "report.html"]:
        assert (tmp_path / name).stat().st_size > 0, name
    assert min(lines) > 1  # a line through one load level would be a dot, not a chart
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| 8 | a | b | p50_ms | +0.10 | -0.40 .. +0.60 | +1.0% | +-0.50 | **equivalent** | 24 |" in report
    assert "Design: interleaved" in report
