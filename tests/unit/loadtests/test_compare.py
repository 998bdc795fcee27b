"""compare's analysis of one run's samples, without a server: capacity blocks, the guard, verdicts, arguments."""

from __future__ import annotations

import numpy as np
import pytest

from loadtests import compare
from loadtests.stats import balanced_block_order


def capacity_samples(rate: dict[str, int], latency: dict[str, float]) -> compare.Samples:
    """A blocks-schedule run: 1 s blocks from t=100; each block's variant answers ``rate`` requests evenly spread."""
    order = balanced_block_order(["a", "b"], 4)
    generator = np.random.default_rng(0)
    start, variant, latencies, block = [], [], [], []
    for index, name in enumerate(order):
        times = 100.0 + index + (np.arange(rate[name]) + 0.5) / rate[name]
        start += list(times)
        variant += [["a", "b"].index(name)] * len(times)
        values = latency[name] * generator.uniform(0.9, 1.1, len(times))
        values[times - 100.0 - index < 0.1] = 1000.0  # stragglers right after the switch: the guard drops them
        latencies += list(values)
        block += [index] * len(times)
    n = len(start)
    return compare.Samples(
        ["a", "b"], np.array(start), np.array(variant), np.array(latencies), np.zeros(n), np.zeros(n),
        np.ones(n, dtype=bool), np.array(block), 100.0, 1.0, order,
    )  # fmt: skip


def test_capacity_blocks_give_throughput_and_latency_verdicts_per_round() -> None:
    samples = capacity_samples({"a": 60, "b": 40}, {"a": 10.0, "b": 20.0})
    measured = samples.measured()
    assert measured.latency_ms.max() < 1000.0  # the first 15% of every block is not measured
    assert len(measured.start) == 4 * 51 + 4 * 34
    found = {c.metric: c for c in compare.level_comparisons("capacity", 8, samples, 0.05, 0.05, None, 2)}
    throughput, latency = found["pairs_per_s"], found["p50_ms"]
    assert throughput.blocks == latency.blocks == 4  # rounds
    assert throughput.verdict == "slower"  # fewer pairs/s is slower
    assert throughput.difference == pytest.approx((34 - 51) * 2 / 0.85)
    assert latency.verdict == "slower"
    assert latency.difference == pytest.approx(10.0, rel=0.05)


def test_a_quiet_gap_after_each_block_moves_the_blocks_not_the_guard() -> None:
    samples = capacity_samples({"a": 60, "b": 40}, {"a": 10.0, "b": 20.0})
    samples.start = samples.start + 0.5 * samples.block  # the same blocks, each 0.5 s later than the last
    samples.block_gap = 0.5
    measured = samples.measured()
    assert len(measured.start) == 4 * 51 + 4 * 34
    assert measured.latency_ms.max() < 1000.0


def test_capacity_rows_count_only_a_variants_own_blocks() -> None:
    samples = capacity_samples({"a": 60, "b": 40}, {"a": 10.0, "b": 20.0})
    load = compare.LoadSettings("http://x", ["a", "b"], "users", 1, None, None, "")
    rows = {row.variant: row for row in compare.variant_results(load, 8, "capacity", samples, {}, {})}
    assert rows["a"].window_s == pytest.approx(4 * 0.85)
    assert rows["a"].requests_per_s == pytest.approx(51 / 0.85)
    assert rows["b"].requests_per_s == pytest.approx(34 / 0.85)
    assert rows["a"].share + rows["b"].share == pytest.approx(1.0)
    assert rows["a"].p50_ms == pytest.approx(10.0, rel=0.1)


@pytest.mark.parametrize(
    "arguments",
    [
        ["--margin", "0"],
        ["--confidence", "1.5"],
        ["--mode", "capacity", "--rounds", "2"],
        ["--block-seconds", "0"],
        ["--request-timeout", "0"],
        ["--mode", "capacity", "--block-gap", "1"],
        ["--mode", "slo", "--slo", "p99<=250ms", "--block-gap", "-1"],
    ],
)
def test_nonsense_arguments_are_refused(arguments: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        compare.main(["--url", "http://127.0.0.1:1", *arguments])
    assert caught.value.code == 2
