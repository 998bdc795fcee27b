"""Seeded synthetic load-test runs for the calibration tests: a machine that drifts, shifts level and is AR(1)
correlated (the model of test_stats), request noise with heavy tails, interleaved or alternating assignment, and
failures. Vectorised over runs: each function returns (runs, requests) arrays."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from loadtests import outcomes
from loadtests.analysis import METRICS, compare_interleaved
from loadtests.stats import Comparison, comparisons_in
from tests.unit.loadtests.test_stats import machine_states, request_noise

RUNS = 300
RATE = 300.0  # requests/s over both variants: what the tiny demo variants carry at 8 users on 2 cores
SECONDS = 60.0  # the default interleaved run the targets are stated for
REQUESTS = int(RATE * SECONDS)
BASE_MS = 15.0
TIMEOUT_MS = 10_000.0
ALPHA = 0.05 / comparisons_in(2, 1, len(METRICS))  # what the tool uses for one pair at one level: 4 verdicts share 5%

DIFFERENT = ("faster", "slower", "higher", "lower")
Matrix = np.ndarray


def machine(generator: np.random.Generator, runs: int = RUNS, n: int = REQUESTS) -> Matrix:
    """Log-latency offsets of the shared machine over each run (drift, level shifts, AR(1) phi 0.97)."""
    result: Matrix = machine_states(generator, runs, n)
    return result


def heavy_noise(generator: np.random.Generator, kind: str, runs: int = RUNS, n: int = REQUESTS) -> Matrix:
    """Per-request multiplicative noise: the model's own, lognormal sigma 1, or Pareto alpha 1.1 (infinite variance)."""
    if kind == "lognormal":
        noise: Matrix = generator.lognormal(0.0, 1.0, (runs, n))
    elif kind == "pareto":
        noise = 1.0 + generator.pareto(1.1, (runs, n))
    else:
        noise = np.exp(request_noise(generator, runs, n))
    return noise


def assignment(generator: np.random.Generator, share_b: float = 0.5, runs: int = RUNS, n: int = REQUESTS) -> Matrix:
    """Variant codes (0 = a, 1 = b) of the requests, in time order. 0.5: users cycling shuffles of both (equal
    counts, random order); otherwise each request goes to b with a probability that itself wanders between blocks
    around ``share_b`` (unequal and uneven counts per block, as when one variant is slower under closed loop)."""
    if share_b == 0.5:
        pairs = generator.permuted(np.tile([0, 1], (runs, n // 2, 1)), axis=2)
        codes: Matrix = pairs.reshape(runs, n)
        return codes
    segments = 40
    wander = np.clip(share_b * generator.uniform(0.5, 1.5, (runs, segments)), 0.02, 0.98)
    probability = np.repeat(wander, int(np.ceil(n / segments)), axis=1)[:, :n]
    codes = (generator.random((runs, n)) < probability).astype(np.int64)
    return codes


def times(runs: int = RUNS, n: int = REQUESTS) -> Matrix:
    grid: Matrix = np.tile(np.linspace(0.0, SECONDS, n), (runs, 1))
    return grid


def interleaved_verdicts(
    latency: Matrix,
    codes: Matrix,
    failed: Matrix | None = None,
    metrics: Sequence[str] = METRICS,
    alpha: float = ALPHA,
    check: Callable[[list[Comparison]], None] | None = None,
) -> dict[str, Counter[str]]:
    """Run the interleaved analysis on every simulated run (latencies in ms, failures censored at the timeout) as
    the tool does (every metric, the report's Bonferroni share of 5%); the count of each verdict per metric, and
    under "any" how many runs had at least one verdict claiming a difference (the report's false rate in A/A)."""
    counts: dict[str, Counter[str]] = {metric: Counter() for metric in [*metrics, "any"]}
    clock = times(1, latency.shape[1])[0]
    for run in range(latency.shape[0]):
        lost = np.zeros(latency.shape[1], dtype=np.bool_) if failed is None else failed[run]
        values = outcomes.censored(latency[run], ~lost, TIMEOUT_MS)
        found = compare_interleaved(
            ["a", "b"], 8, clock, codes[run].astype(np.int64), values, alpha=alpha, failed=lost, metrics=metrics,
            seed=run,
        )  # fmt: skip
        if check:
            check(found)
        for comparison in found:
            counts[comparison.metric][comparison.verdict] += 1
        counts["any"]["different" if any(c.verdict in DIFFERENT for c in found) else "same"] += 1
    return counts


def rate(counts: Counter[str], *words: str) -> float:
    return sum(counts[word] for word in words) / sum(counts.values())


# --- block-level simulation: one value per variant per block, for cases whose analysis starts from blocks ---------


def block_medians(
    generator: np.random.Generator,
    runs: int,
    repeats: int,
    blocks: int,
    state_sd: float = 0.03,
    state_phi: float = 0.98,
    noise_sd: float = 0.02,
    effect: float = 0.0,
) -> tuple[Matrix, Matrix]:
    """Per-block median latency of a and b, shape (runs, repeats, blocks): a shared machine drift (it cancels in
    the paired difference, so it is drawn as the model's level), each variant's own AR(1) state in log-latency
    (``state_phi`` per block, stationary sd ``state_sd``; drawn afresh at every restart, i.e. every repeat), and the
    sampling noise of a block median (``noise_sd``, log scale). ``effect``: b's true relative difference."""
    shape = (runs, repeats, blocks)
    shared = np.cumsum(generator.normal(0.0, 0.01, shape), axis=2)

    def state() -> Matrix:
        innovations = generator.normal(0.0, state_sd * np.sqrt(1 - state_phi**2), shape)
        values = np.empty(shape)
        values[..., 0] = generator.normal(0.0, state_sd, shape[:2])  # a fresh process: its stationary state
        for index in range(1, blocks):
            values[..., index] = state_phi * values[..., index - 1] + innovations[..., index]
        return values

    a = BASE_MS * np.exp(shared + state() + generator.normal(0.0, noise_sd, shape))
    b = BASE_MS * (1 + effect) * np.exp(shared + state() + generator.normal(0.0, noise_sd, shape))
    return a, b


def mdc_sojourn_ms(arrivals: Matrix, servers: int, service_s: float) -> Matrix:
    """Time in system (ms) of an M/D/c FIFO queue from empty, per row of arrival times (s). With equal service
    times and FIFO, request n starts when it arrives or when request n - c finished, whichever is later: c
    independent running maxima, vectorised."""
    n = arrivals.shape[-1] - arrivals.shape[-1] % servers
    grouped = arrivals[..., :n].reshape(*arrivals.shape[:-1], n // servers, servers)
    offset = np.arange(n // servers)[:, None] * service_s
    start = offset + np.maximum.accumulate(grouped - offset, axis=-2)
    sojourn: Matrix = ((start - grouped + service_s) * 1000).reshape(*arrivals.shape[:-1], n)
    return sojourn


def mdc_capacity(servers: int, service_s: float, limit_ms: float, q: float, n: int, seed: int) -> float:
    """The true capacity of an M/D/c queue at 'p(q) of time in system <= limit': bisection on the arrival rate
    over one long stationary run (common random numbers make the quantile monotone in the rate)."""
    gaps = np.random.default_rng(seed).exponential(1.0, n)
    low, high = 0.0, servers / service_s
    for _ in range(22):
        middle = (low + high) / 2
        sojourn = mdc_sojourn_ms(np.cumsum(gaps / middle), servers, service_s)[n // 20 :]
        low, high = (middle, high) if np.quantile(sojourn, q) <= limit_ms else (low, middle)
    return (low + high) / 2
