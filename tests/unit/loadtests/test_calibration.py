"""Calibration of every verdict on seeded synthetic runs (300 per case, the default 60 s interleaved run at 100
requests/s): failures count, tails are compared, unequal counts and heavy tails do not fool the median, and
capacity orders drawn per round survive a periodic disturbance. Targets: at most 5% false verdicts with no true
difference (6% where marked hard); at least 80% power for a true 10% median difference and a tail regression."""

from __future__ import annotations

import numpy as np
import pytest

from loadtests import analysis, stats
from tests.unit.loadtests.simulate import BASE_MS, RUNS, assignment, heavy_noise, interleaved_verdicts, machine, rate

LATENCY = ("p50_ms", "p95_tail", "p99_tail")
CAPACITY_ALPHA = 0.05 / stats.comparisons_in(2, 1, len(analysis.METRICS) + 1)  # what the tool uses: 5 verdicts


def base_latencies(seed: int, noise: str = "model") -> tuple[np.ndarray, np.random.Generator]:
    generator = np.random.default_rng(seed)
    return BASE_MS * np.exp(machine(generator)) * heavy_noise(generator, noise), generator


def test_a_variant_that_fails_its_slow_requests_is_never_called_faster() -> None:
    """A/A in latency, but b's slowest 10% of requests time out. Counted as lasting the client's timeout, they can
    only make b slower, never faster. (They fall where the machine was slowest, so they cluster in time: the
    per-block error shares vary widely and the error-rate verdict is often inconclusive, honestly so.)"""
    latency, generator = base_latencies(21)
    codes = assignment(generator)
    mine = np.where(codes == 1, latency, np.nan)
    failed = (codes == 1) & (latency > np.nanquantile(mine, 0.9, axis=1, keepdims=True))
    counts = interleaved_verdicts(latency, codes, failed)
    for metric in LATENCY:
        assert rate(counts[metric], "faster") == 0.0, (metric, counts[metric])
    assert rate(counts["p50_ms"], "slower") <= 0.05, counts["p50_ms"]  # the median itself did not change
    assert rate(counts["p95_tail"], "slower") >= 0.3, counts["p95_tail"]
    assert rate(counts["error_rate"], "lower") == 0.0, counts["error_rate"]


def test_a_variant_that_fails_one_request_in_ten_has_a_higher_error_rate_and_is_not_faster() -> None:
    """b fails 10% of its requests at random (an injected fault on every tenth batch): error rate higher, and the
    failures, censored at the timeout, never make it faster."""
    latency, generator = base_latencies(28)
    codes = assignment(generator)
    failed = (codes == 1) & (generator.random(latency.shape) < 0.1)
    counts = interleaved_verdicts(latency, codes, failed)
    assert rate(counts["error_rate"], "higher") >= 0.8, counts["error_rate"]
    for metric in LATENCY:
        assert rate(counts[metric], "faster") == 0.0, (metric, counts[metric])


def test_identical_variants_with_a_few_failures_each_are_not_told_apart_on_errors() -> None:
    latency, generator = base_latencies(22)
    codes = assignment(generator)
    failed = generator.random(latency.shape) < 0.01
    counts = interleaved_verdicts(latency, codes, failed)
    assert rate(counts["any"], "different") <= 0.05, counts


@pytest.mark.parametrize("noise", ["lognormal", "pareto"])
def test_unequal_counts_and_heavy_tails_do_not_invent_differences(noise: str) -> None:
    """Hard case: b gets a quarter of the requests, unevenly per block (1:3 on average, wandering), and latencies
    are lognormal sigma 1 or Pareto alpha 1.1 on top of the drifting machine. Equal-count medians and per-block tail
    shares keep every latency verdict's false rate at the target (6%, marked hard)."""
    latency, generator = base_latencies(23, noise)
    codes = assignment(generator, share_b=0.25)
    counts = interleaved_verdicts(latency, codes)
    assert rate(counts["any"], "different") <= 0.06, counts


def test_a_mean_of_unequal_block_medians_is_biased() -> None:
    """Why the medians are taken over equal counts: with a 1:3 split and heavy tails, the plain mean of per-block
    medians (each over whatever a variant got) differs between identical variants by several percent."""
    latency, generator = base_latencies(24, "lognormal")
    codes = assignment(generator, share_b=0.25)
    blocks = latency.shape[1] // 60  # about 15 requests of b per block
    units = np.repeat(np.arange(blocks), 60)
    biased = []
    for run in range(60):
        table, _ = stats.grouped_quantile(latency[run], units * 2 + codes[run], 2 * blocks, 0.5)
        medians = table.reshape(blocks, 2)
        biased.append(np.nanmean(medians[:, 1]) / np.nanmean(medians[:, 0]) - 1)
    assert np.mean(biased) > 0.03  # small blocks of b: their medians sit higher for a right-skewed distribution


def test_a_tail_only_regression_is_found_in_the_tail_verdicts() -> None:
    """b multiplies 2% of its requests by 3 (true p99 up by a sixth, median unchanged): the p99 tail verdict finds
    it, and no verdict calls b faster."""
    latency, generator = base_latencies(25)
    codes = assignment(generator)
    hit = (codes == 1) & (generator.random(latency.shape) < 0.02)
    counts = interleaved_verdicts(np.where(hit, 3 * latency, latency), codes)
    assert rate(counts["p99_tail"], "slower") >= 0.8, counts["p99_tail"]
    for metric in LATENCY:
        assert rate(counts[metric], "faster") == 0.0, (metric, counts[metric])


@pytest.mark.parametrize("effect", [0.10, -0.10])
def test_a_ten_percent_median_difference_is_found_in_the_default_run(effect: float) -> None:
    latency, generator = base_latencies(26)
    codes = assignment(generator)
    counts = interleaved_verdicts(latency * np.where(codes == 1, 1 + effect, 1.0), codes)
    right, wrong = ("slower", "faster") if effect > 0 else ("faster", "slower")
    assert rate(counts["p50_ms"], right) >= 0.8, counts
    assert rate(counts["p50_ms"], wrong) == 0.0, counts


def alternating_false_rate(order_of: str, seed: int = 27, rounds: int = 6, per_block: int = 40) -> float:
    """Capacity mode, A/A, with a periodic disturbance (+30% latency for two blocks out of every four, straddling a
    round boundary): the share of runs whose median verdict says faster or slower."""
    generator = np.random.default_rng(seed)
    variants = ["a", "b"]
    blocks = 2 * rounds
    noise = machine(generator, RUNS, blocks * per_block) + generator.normal(0.0, 0.25, (RUNS, blocks * per_block))
    block = np.repeat(np.arange(blocks), per_block)
    disturbed = np.isin(block % 4, (0, 3))
    latency = BASE_MS * np.exp(noise) * np.where(disturbed, 1.3, 1.0)
    wrong = 0
    for run in range(RUNS):
        order = (
            stats.balanced_block_order(variants, rounds)
            if order_of == "rotation"
            else stats.randomized_block_order(variants, rounds, seed=run)
        )
        codes = np.array([variants.index(order[index]) for index in block], dtype=np.int64)
        (found,) = analysis.compare_pairs(
            variants, 8, block // 2, codes, latency[run], np.zeros(len(block), dtype=np.bool_), rounds,
            stats.ALTERNATING, alpha=CAPACITY_ALPHA, metrics=("p50_ms",), seed=run,
        )  # fmt: skip
        wrong += found.verdict in ("faster", "slower")
    return wrong / RUNS


def test_capacity_orders_drawn_per_round_survive_a_periodic_disturbance() -> None:
    assert alternating_false_rate("rotation") > 0.5  # the fixed rotation hands the disturbance to one variant
    assert alternating_false_rate("random") <= 0.05


def test_throughput_below_saturation_is_not_a_verdict() -> None:
    table = np.array([[10.0, 10.0], [10.0, 9.9], [10.0, 10.1], [9.9, 10.0]])
    (saturated,) = analysis.compare_throughput(["a", "b"], 10, table, 0.05, 0.05, saturated=True)
    (unsaturated,) = analysis.compare_throughput(["a", "b"], 10, table, 0.05, 0.05, saturated=False)
    assert saturated.verdict == "equivalent"
    assert unsaturated.verdict == stats.NOT_SATURATED
    assert unsaturated.difference == saturated.difference


def test_simulation_size() -> None:
    assert RUNS >= 300
