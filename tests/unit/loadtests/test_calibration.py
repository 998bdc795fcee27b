"""Calibration of every verdict on seeded synthetic runs (300 per case, the default 60 s interleaved run at 100
requests/s): failures count, tails are compared, unequal counts and heavy tails do not fool the median, and
capacity orders drawn per round survive a periodic disturbance. Targets: at most 5% false verdicts with no true
difference (6% where marked hard); at least 80% power for a true 10% median difference and a tail regression."""

from __future__ import annotations

from dataclasses import replace
from statistics import NormalDist

import numpy as np
import pytest

from loadtests import analysis, repeats, sequential, slo, stats
from loadtests.measurements import GUARD_FRACTION
from tests.unit.loadtests import simulate
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


# --- replication across restarts (--repeats) ----------------------------------------------------------------------

REPEATS = 3
BLOCKS = 60  # the default 60 s interleaved run cuts its window into 60 blocks


def run_verdicts(a: np.ndarray, b: np.ndarray, alpha: float = simulate.ALPHA) -> list[stats.Comparison]:
    """The median verdict of one run from its block medians, as the tool makes it."""
    verdict = stats.paired_verdict(a, b, alpha=alpha)
    return [stats.comparison("a", "b", "p50_ms", 8, verdict, alpha, stats.INTERLEAVED)]


def test_per_variant_state_fools_one_run_but_not_three_restarted_runs() -> None:
    """Hard case of the review: each variant has a slowly drifting state of its own (AR(1) per block, phi 0.98,
    sd 3% in log-latency), drawn afresh when its process restarts. Within one run nothing tells it from a real
    difference, so single runs call identical variants faster/slower far too often; with --repeats 3 the verdict
    rests on the three run-level differences (t interval, 2 degrees of freedom) and keeps the 5% target. The
    report's between-run variance sees the state; the within-run variance does not."""
    generator = np.random.default_rng(41)
    a, b = simulate.block_medians(generator, RUNS, REPEATS, BLOCKS)
    single = combined = 0
    between, within = [], []
    for run in range(RUNS):
        runs = [run_verdicts(a[run, r], b[run, r]) for r in range(REPEATS)]
        single += runs[0][0].verdict in ("faster", "slower")
        (merged,) = repeats.combine(runs, simulate.ALPHA, restarted=True)
        assert merged.runs == REPEATS
        assert merged.blocks == REPEATS
        combined += merged.verdict in ("faster", "slower")
        between.append(merged.between_variance)
        within.append(merged.within_variance)
    assert single / RUNS >= 0.15, single / RUNS  # what one run says: the review's 16-42%
    assert combined / RUNS <= 0.05, combined / RUNS
    assert np.median(between) > 3 * np.median(within)  # the state shows up between runs, not within


def test_three_restarted_runs_still_find_a_large_difference() -> None:
    """The price of honesty: two degrees of freedom (t quantile 8.9 at the report's Bonferroni share). With the same
    per-variant state (run-level sd of the difference about 3%) a true 30% difference is found in at least 80% of
    runs (20%: about 60%), and never the wrong way round. More runs buy power: --plan says how many."""
    generator = np.random.default_rng(42)
    a, b = simulate.block_medians(generator, RUNS, REPEATS, BLOCKS, effect=0.30)
    words = [
        repeats.combine([run_verdicts(a[run, r], b[run, r]) for r in range(REPEATS)], simulate.ALPHA, True)[0].verdict
        for run in range(RUNS)
    ]
    assert words.count("slower") / RUNS >= 0.8, {w: words.count(w) for w in set(words)}
    assert words.count("faster") == 0


# --- run until decided (--until-decided): sequential looks ----------------------------------------------------------

LOOKS = 8  # e.g. --duration 15 --max-duration 120
PER_LOOK = 15  # blocks each look adds
SEQUENTIAL_RUNS = 600
SEQUENTIAL_ALPHA = 0.05  # the whole 5% on one verdict: the strictest reading of the target


def sequential_outcome(
    seed: int, kind: str | None, effect: float = 0.0, runs: int = SEQUENTIAL_RUNS
) -> tuple[float, float, list[int]]:
    """Every run looks after each chunk and stops once its verdict is decided (or at the last look). ``kind``: an
    alpha-spending function, or None for the naive procedure (every look at the full alpha). Returns the share of
    runs whose stopping look claims a difference, the share calling b slower, and the looks taken. Block level
    (independent blocks: the looks are what is tested here; autocorrelated blocks have their own cases), noisy
    enough that equivalence within 5% takes several looks to show, so a chance crossing has many chances."""
    generator = np.random.default_rng(seed)
    a, b = simulate.block_medians(
        generator, runs, 1, LOOKS * PER_LOOK, state_sd=0.0, noise_sd=0.12, effect=effect
    )  # fmt: skip
    different = slower = 0
    taken = []
    for run in range(runs):

        def analyse(look: int, nominal: float, run: int = run) -> list[stats.Comparison]:
            return run_verdicts(a[run, 0, : look * PER_LOOK], b[run, 0, : look * PER_LOOK], nominal)

        if kind is None:
            found: list[stats.Comparison] = []
            for look in range(1, LOOKS + 1):
                found = [replace(c, look=look) for c in analyse(look, SEQUENTIAL_ALPHA)]
                if sequential.decided(found):
                    break
        else:
            found = sequential.until_decided(analyse, LOOKS, SEQUENTIAL_ALPHA, kind)
        different += any(c.verdict in ("faster", "slower") for c in found)
        slower += any(c.verdict == "slower" for c in found)
        taken.append(found[0].look)
    return different / runs, slower / runs, taken


def test_naive_repeated_looks_inflate_the_false_rate() -> None:
    """Why the looks need alpha spending: stopping at the first look where the verdict is decided, each look at
    the full level, calls identical variants different about three times as often as the 5% asked for."""
    false_rate, _, _ = sequential_outcome(51, None)
    assert false_rate > 0.10, false_rate


@pytest.mark.parametrize("kind", sequential.SPENDING)
def test_alpha_spending_keeps_the_false_rate_over_the_looks(kind: str) -> None:
    """The same runs with Lan-DeMets spending over the 8 looks: at most 5% (the nominal; the fixed-length t test
    on the same model sits at 5.2% in 1,000 runs, so this is as tight as the design)."""
    false_rate, _, taken = sequential_outcome(51, kind)
    assert false_rate <= 0.05, false_rate
    assert max(taken) == LOOKS  # some runs needed every look


def test_a_true_difference_stops_early_and_is_found() -> None:
    """A true 10% median difference: found in at least 80% of runs, and at half the looks or fewer in most."""
    _, power, taken = sequential_outcome(52, "obrien-fleming", effect=0.10, runs=RUNS)
    assert power >= 0.8, power
    assert np.median(taken) <= LOOKS / 2, np.median(taken)


def test_the_boundaries_match_the_published_obrien_fleming_design() -> None:
    """Lan-DeMets O'Brien-Fleming, 4 equal looks, two-sided 5%: z = 4.333, 2.963, 2.359, 2.014 (Jennison and
    Turnbull); the spent increments add up to alpha."""
    nominal = sequential.nominal_alphas(sequential.fractions_for(4), 0.05)
    z = [NormalDist().inv_cdf(1 - p / 2) for p in nominal]
    assert z == pytest.approx([4.333, 2.963, 2.359, 2.014], abs=0.005)
    assert sequential.nominal_alphas([1.0], 0.05) == pytest.approx([0.05])
    assert sequential.spent(1.0, 0.05, "pocock") == pytest.approx(0.05)


# --- the SLO search on a simulated M/D/c queue ----------------------------------------------------------------------

SERVERS, SERVICE_S, LIMIT_MS = 4, 0.010, 25.0  # four workers, 10 ms per request, SLO p99 <= 25 ms
MDC_CAPACITY = 280.8  # requests/s where the stationary p99 of time in system is 25 ms (utilisation 0.70)
MDC_TERMS = [slo.parse_term("p99<=25ms"), slo.parse_term("errors<=0.1%")]


def mdc_search(seed: int, servers: int = SERVERS, start: float = 50.0) -> list[slo.RateSearch]:
    """The tool's search (slo.RateSearch, slo.measure) against an M/D/c queue, every run's step simulated at once:
    alternating blocks start empty (the other variant ran before), the first 15% of each discarded."""
    generator = np.random.default_rng(seed)
    rounds, block_seconds, steps = 6, 2.0, 7
    searches = [slo.RateSearch(start) for _ in range(RUNS)]
    for step in range(steps + 1):
        confirming = step == steps
        rates = np.array([s.confirmation_rate() if confirming else s.next_rate() for s in searches])
        n_rounds = rounds * (2 if confirming else 1)
        rows = np.repeat(rates, n_rounds)
        count = int(np.ceil(rows.max() * block_seconds * 1.3 + 40))
        arrivals = np.cumsum(generator.exponential(1.0, (len(rows), count)) / rows[:, None], axis=1)
        sojourn = simulate.mdc_sojourn_ms(arrivals, servers, SERVICE_S)
        arrivals = arrivals[:, : sojourn.shape[1]]
        kept = (arrivals < block_seconds) & (arrivals >= GUARD_FRACTION * block_seconds)
        seconds = n_rounds * block_seconds * (1 - GUARD_FRACTION)
        for run, search in enumerate(searches):
            mine = kept[run * n_rounds : (run + 1) * n_rounds]
            units = np.repeat(np.arange(n_rounds), mine.sum(axis=1))
            latency = sojourn[run * n_rounds : (run + 1) * n_rounds][mine]
            point = slo.measure(
                float(rates[run]), MDC_TERMS, latency, np.zeros(len(latency), dtype=np.bool_), units, n_rounds,
                seconds, confirmation=confirming,
            )  # fmt: skip
            search.record(point)
    return searches


def test_the_slo_search_finds_the_capacity_of_an_m_d_c_queue() -> None:
    found = np.array([slo.capacity_estimate(search.points)[0] for search in mdc_search(61)])
    close = np.abs(found / MDC_CAPACITY - 1) <= 0.10
    assert close.mean() >= 0.90, (close.mean(), np.percentile(found, [5, 50, 95]))


def test_the_m_d_c_truth_is_where_the_stationary_p99_meets_the_slo() -> None:
    """The hard-coded truth, recomputed on a shorter stationary run (one million requests): within 1%."""
    truth = simulate.mdc_capacity(SERVERS, SERVICE_S, LIMIT_MS, 0.99, 1_000_000, seed=7)
    assert truth == pytest.approx(MDC_CAPACITY, rel=0.01)
