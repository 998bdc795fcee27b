"""The SLO search on a simulated queue whose capacity is known, its verdicts, and the fleet arithmetic.

The simulated server is M/M/1 (Poisson arrivals, exponential service at rate mu, one server, FIFO): its time in
system is exponential with rate mu - lambda, so the highest arrival rate whose p99 stays under L is exactly
lambda* = mu - ln(100) / L (here mu = 1000/s and L = 25 ms: 815.8 requests/s). Each block starts with an empty
queue (the other variant ran before it) and its first 15% is discarded, as the tool does."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from loadtests import slo
from loadtests.measurements import GUARD_FRACTION

RUNS = 300
BLOCK_SECONDS = 2.0
ROUNDS = 6  # per search step, each variant one block per round
STEPS = 7
MU = 1000.0
TERMS = [slo.parse_term("p99<=25ms"), slo.parse_term("errors<=0.1%")]


def truth(mu: float, limit_ms: float = 25.0, q: float = 0.99) -> float:
    return mu - math.log(1 / (1 - q)) / (limit_ms / 1000)


def simulate_blocks(
    rates: np.ndarray, mus: np.ndarray, generator: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One block per row (rates, mus: (rows,)): M/M/1 from empty. Returns arrival times, times in system (ms) and
    a mask of the requests that arrived within the block."""
    count = int(np.ceil(rates.max() * BLOCK_SECONDS * 1.3 + 30))
    gaps = generator.exponential(1.0, (len(rates), count)) / rates[:, None]
    arrivals = np.cumsum(gaps, axis=1)
    service = generator.exponential(1.0, (len(rates), count)) / mus[:, None]
    # Lindley's recursion w_n = max(0, w_{n-1} + s_{n-1} - gap_n) in closed form: the walk of (s_{n-1} - gap_n)
    # minus its running minimum (from 0), vectorised over requests as well as rows.
    walk = np.concatenate([np.zeros((len(rates), 1)), np.cumsum(service[:, :-1] - gaps[:, 1:], axis=1)], axis=1)
    wait = walk - np.minimum.accumulate(np.minimum(walk, 0.0), axis=1)
    sojourn = wait + service
    return arrivals, sojourn * 1000, arrivals < BLOCK_SECONDS


def search(mus: tuple[float, float], seed: int, start: float = 100.0) -> list[list[slo.RateSearch]]:
    """Every run's search for both variants, steps vectorised over runs; the last step confirms."""
    generator = np.random.default_rng(seed)
    searches = [[slo.RateSearch(start) for _ in mus] for _ in range(RUNS)]
    for step in range(STEPS + 1):
        confirming = step == STEPS
        rates = np.array([[s.confirmation_rate() if confirming else s.next_rate() for s in run] for run in searches])
        rounds = ROUNDS * (2 if confirming else 1)
        rows = np.repeat(rates[:, :, None], rounds, axis=2).ravel()
        mu_rows = np.tile(np.repeat(np.array(mus), rounds), RUNS)
        arrivals, sojourn, inside = simulate_blocks(rows, mu_rows, generator)
        kept = inside & (arrivals >= GUARD_FRACTION * BLOCK_SECONDS)
        shape = (RUNS, len(mus), rounds)
        for run in range(RUNS):
            for index in range(len(mus)):
                row = np.ravel_multi_index((run, index, 0), shape)
                block = slice(row, row + rounds)
                mine = kept[block]
                units = np.repeat(np.arange(rounds), mine.sum(axis=1))
                latency = sojourn[block][mine]
                seconds = rounds * BLOCK_SECONDS * (1 - GUARD_FRACTION)
                point = slo.measure(
                    float(rates[run, index]), TERMS, latency, np.zeros(len(latency), dtype=np.bool_), units, rounds,
                    seconds, confirmation=confirming,
                )  # fmt: skip
                searches[run][index].record(point)
    return searches


def capacity(found: slo.RateSearch, name: str) -> slo.Capacity:
    rate, low, high = slo.capacity_estimate(found.points)
    return slo.Capacity(
        variant=name, slo="p99<=25ms", rate=rate, ci_low=low, ci_high=high, requests_per_s=rate, pairs_per_request=1,
        p_latency_ms_at_rate=math.nan, p50_ms_at_rate=math.nan, error_rate_at_rate=0.0, confirmed=True,
        generator_bound=False, steps=len(found.points),
    )  # fmt: skip


def verdict(run: list[slo.RateSearch]) -> str:
    return slo.capacity_verdict(capacity(run[0], "a"), capacity(run[1], "b"), 0.05)[0]


@pytest.fixture(scope="module")
def identical() -> list[list[slo.RateSearch]]:
    return search((MU, MU), seed=31)


def test_the_search_finds_the_true_capacity_within_ten_percent(identical: list[list[slo.RateSearch]]) -> None:
    lam = truth(MU)
    found = np.array([slo.capacity_estimate(run[0].points) for run in identical])
    close = np.abs(found[:, 0] / lam - 1) <= 0.10
    assert close.mean() >= 0.90, (lam, np.percentile(found[:, 0], [5, 50, 95]))
    covered = (found[:, 1] <= lam) & (lam <= found[:, 2])
    # The interval covers sampling error, not the bias of short blocks that start with an empty queue (the median
    # estimate sits about 2% above the truth, and so does the low end where it misses): it covers the truth in 58% of
    # runs here (a fit to the bounds themselves covered 65%, by a low end that a first rate's few requests could
    # pull to 0).
    assert covered.mean() >= 0.55, covered.mean()


def test_identical_variants_get_no_capacity_difference(identical: list[list[slo.RateSearch]]) -> None:
    words = [verdict(run) for run in identical]
    assert (words.count("higher") + words.count("lower")) / RUNS <= 0.05, {w: words.count(w) for w in set(words)}


def test_a_slower_server_has_a_lower_capacity() -> None:
    runs = search((MU, 0.7 * MU), seed=32)  # true capacities 815.8 and 515.8 requests/s: 37% lower
    words = [verdict(run) for run in runs]
    assert words.count("lower") / RUNS >= 0.80, {w: words.count(w) for w in set(words)}
    assert words.count("higher") == 0


@pytest.mark.parametrize(
    ("text", "kind", "budget", "limit"),
    [("p99<=250ms", "latency", 0.01, 250.0), ("p99.9 <= 1s", "latency", 0.001, 1000.0),
     ("errors<=0.1%", "errors", 0.001, math.nan), ("errors<=0.02", "errors", 0.02, math.nan)],
)  # fmt: skip
def test_terms_parse(text: str, kind: str, budget: float, limit: float) -> None:
    term = slo.parse_term(text)
    assert term.kind == kind
    assert term.budget == pytest.approx(budget)
    assert term.limit_ms == limit or (math.isnan(limit) and math.isnan(term.limit_ms))


@pytest.mark.parametrize("text", ["p99<250ms", "p0<=1ms", "errors<=150%", "latency<=3ms"])
def test_nonsense_terms_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="SLO term"):
        slo.parse_term(text)


def test_a_shortfall_with_an_empty_queue_is_the_generator_not_the_service() -> None:
    latency = np.full(400, 5.0)
    units = np.repeat(np.arange(4), 100)
    point = slo.measure(100.0, TERMS, latency, np.zeros(400, dtype=np.bool_), units, 4, 8.0, np.zeros(400))
    assert point.achieved == 50.0
    assert point.generator_bound  # half the offered rate went out, and nothing queued in the service
    assert point.met
    assert point.service is not None
    assert point.service.source == "headers"
    late = np.full(400, 40.0)  # every request over the 25 ms limit
    queued = slo.measure(100.0, TERMS, late, np.zeros(400, dtype=np.bool_), units, 4, 8.0, np.full(400, 30.0))
    assert not queued.generator_bound
    assert not queued.met  # the service queued what went out past the SLO: it could not take the offered rate
    # A shortfall while the service queued but what went out met the SLO: the service's evidence decides, not the
    # SLO of what went out (that rule blamed the generator for a saturated variant on the real service).
    busy = slo.ServiceLoad(seconds=8.0, requests=400, queue_s=400 * 0.004, service_s=400 * 0.005, device_s=7.0)
    starved = slo.measure(100.0, TERMS, latency, np.zeros(400, dtype=np.bool_), units, 4, 8.0, np.full(400, 4.0),
                          service=busy)  # fmt: skip
    assert not starved.generator_bound
    assert not starved.met
    assert "service-bound" in starved.why
    # The same shortfall with the generator's CPU saturated and a service with room: the generator's.
    roomy = slo.ServiceLoad(seconds=8.0, requests=400, queue_s=400 * 0.0015, service_s=400 * 0.005, device_s=2.8)
    saturated = slo.measure(100.0, TERMS, latency, np.zeros(400, dtype=np.bool_), units, 4, 8.0, np.zeros(400),
                            generator_cpu=0.97, service=roomy)  # fmt: skip
    assert saturated.generator_bound
    assert saturated.met
    search = slo.RateSearch(50.0)
    search.record(point)
    assert search.generator_bound
    assert search.next_rate() == 100.0  # no climb past what the generator can offer


SLOW_TERMS = [slo.parse_term("p99<=250ms"), slo.parse_term("errors<=0.1%")]


def slow_variant_points() -> list[slo.RatePoint]:
    """The misfire on the real service, in numbers like its own (``slow``: 50 ms per forward pass, batches of 4;
    3 rounds of 1.2 s blocks, 3.06 s measured per step): at 20/s it held; at 39/s offered only 26/s went out (the
    generator at 10% of a core), what went out met the SLO (p99 220 ms), the median queue wait was 40 ms, and the
    device was busy 98% of the variant's time. The old rule (short, and what went out met the SLO) called that
    generator-bound: the capacity became "at least 39", and its confirmation (p99 277 ms) was ignored."""
    generator = np.random.default_rng(23)
    seconds = 3 * 1.2 * (1 - GUARD_FRACTION)

    def point(rate: float, n: int, p50: float, p99: float, queue: float, busy: float, confirmation: bool = False
              ) -> slo.RatePoint:  # fmt: skip
        rounds = 6 if confirmation else 3
        sigma = math.log(p99 / p50) / 2.326
        latency = p50 * np.exp(sigma * generator.standard_normal(n))
        units = np.sort(generator.integers(0, rounds, n))
        queue_ms = np.full(n, queue)
        service = slo.ServiceLoad(
            seconds=rounds * 1.2,
            requests=n,
            queue_s=n * queue / 1000,
            service_s=float(np.sum(latency)) / 1000 * 0.9,
            device_s=busy * rounds * 1.2,
        )
        return slo.measure(rate, SLOW_TERMS, latency, np.zeros(n, dtype=np.bool_), units, rounds,
                           seconds * rounds / 3, queue_ms, 0.05 / 9, 0.10, confirmation, service)  # fmt: skip

    return [
        point(20.0, 59, 85.0, 135.0, 16.0, 0.82),
        point(39.0, 80, 128.0, 220.0, 40.0, 0.98),
        point(34.0, 200, 130.0, 277.0, 45.0, 0.99, confirmation=True),
    ]


def test_a_saturated_variant_the_generator_fell_short_of_is_service_bound() -> None:
    """Regression (issue #23): the shortfall at 39/s happened while the service queued (device busy 98%, 40 ms of
    queue wait in every request), so the service could not absorb the rate: the SLO broke there, the capacity is
    below it, and the variant is found lower than a twin the generator could not saturate."""
    held, short, confirmation = slow_variant_points()
    assert short.short
    assert short.load <= 1.0  # what went out met the SLO: the old rule's "generator-bound"
    assert short.service is not None
    assert short.service.queues
    assert not short.generator_bound
    assert not short.met
    assert "service-bound" in short.why
    search = slo.RateSearch(20.0)
    for found in (held, short, confirmation):
        search.record(found)
    assert not search.generator_bound
    assert search.broke == 34.0
    rate, low, high = slo.capacity_estimate(search.points)
    assert high <= 39.0
    slow = slo.Capacity(
        variant="slow", slo="p99<=250ms", rate=rate, ci_low=low, ci_high=high, requests_per_s=rate,
        pairs_per_request=1, p_latency_ms_at_rate=confirmation.quantile_ms, p50_ms_at_rate=confirmation.p50_ms,
        error_rate_at_rate=0.0, confirmed=confirmation.met, generator_bound=search.generator_bound, steps=3,
    )  # fmt: skip
    twin = replace(slow, variant="a1", rate=80.0, ci_low=80.0, ci_high=math.inf, generator_bound=True)
    assert slo.capacity_verdict(twin, slow, 0.05)[0] == "lower"
    # Under the old rule the slow variant was generator-bound too, and never "lower" than anything.
    assert slo.capacity_verdict(twin, replace(slow, generator_bound=True), 0.05)[0] == "inconclusive"


@pytest.mark.parametrize(
    ("short", "cpu", "queue_share", "busy", "bound", "why"),
    [
        (False, 1.0, 0.0, 0.0, False, ""),  # the rate went out: nothing to judge
        (True, 0.10, 0.31, 0.98, False, "service-bound"),  # the misfire: a saturated device
        (True, 0.10, 0.60, 0.40, False, "service-bound"),  # requests waited most of their time
        (True, 0.97, 0.60, 0.95, False, "service-bound"),  # both saturated: the service could not absorb it either
        (True, 0.97, 0.30, 0.60, True, "CPU was saturated"),
        (True, 0.10, 0.05, 0.20, True, "sat idle"),
        (True, 0.10, 0.05, math.nan, True, "sat idle"),  # device time unknown: the queue alone
        (True, 0.10, 0.30, 0.60, False, "neither idle nor queueing"),  # no evidence either way: the service's
    ],
)
def test_whose_shortfall(short: bool, cpu: float, queue_share: float, busy: float, bound: bool, why: str) -> None:
    service = slo.ServiceLoad(seconds=4.0, requests=100, queue_s=queue_share * 2.0, service_s=2.0,
                              device_s=busy * 4.0)  # fmt: skip
    found, reason = slo.shortfall(short, cpu, service)
    assert found is bound
    assert why in reason


def test_without_evidence_a_shortfall_is_the_generators_only_when_its_cpu_is_saturated() -> None:
    assert slo.shortfall(True, 0.5, None) == (False, slo.shortfall(True, 0.5, None)[1])
    assert "no evidence" in slo.shortfall(True, 0.5, None)[1]
    assert slo.shortfall(True, 0.95, None)[0]


def test_service_load_is_littles_law() -> None:
    load = slo.ServiceLoad(seconds=10.0, requests=500, queue_s=5.0, service_s=20.0, device_s=6.0)
    assert load.queue_share == pytest.approx(0.25)
    assert load.busy == pytest.approx(0.6)
    assert load.in_flight == pytest.approx(2.0)  # 500 requests of 40 ms each over 10 s
    assert load.queued == pytest.approx(0.5)
    assert not load.queues
    assert not load.idle
    headers = slo.headers_load(np.full(100, 40.0), np.full(100, 30.0), 2.0)
    assert headers.source == "headers"
    assert math.isnan(headers.busy)
    assert headers.queue_share == pytest.approx(0.75)  # of the client's latency: never above the service's share
    assert headers.queues


def test_zero_violations_are_not_proof_of_none() -> None:
    point, low, high = slo.share_interval(np.zeros(300, dtype=np.bool_), np.repeat(np.arange(3), 100), 3, 0.05)
    assert point == 0.0
    assert low == 0.0
    assert 0.01 < high < 0.02  # the Wilson bound of 0 in 300: a p99 target is not yet shown met


def test_fleet_and_cost_arithmetic() -> None:
    assert slo.cost_per_million(3.6, 100.0) == pytest.approx(10.0)  # $3.60/h at 100 pairs/s: 360,000 pairs/h
    assert slo.replicas(1000.0, 100.0, 0.7) == 15.0  # ceil(1000 / 70)
    assert slo.replicas(1000.0, 0.0, 0.7) == math.inf


def test_crossing_and_monotone_fit() -> None:
    assert slo._monotone([0.1, 0.5, 0.3, 2.0]) == pytest.approx([0.1, 0.4, 0.4, 2.0])
    assert slo.crossing([10.0, 20.0], [0.5, 2.0]) == pytest.approx(10 * 2 ** (math.log(2) / math.log(4)))
    assert slo.crossing([10.0, 20.0], [1.5, 2.0]) == 0.0
    assert slo.crossing([10.0, 20.0], [0.5, 0.9]) == math.inf


def test_a_rate_the_service_could_not_absorb_leaves_the_interval_open_up_to_it() -> None:
    """A search whose only break was a shortfall with the service queueing (the load there is unknown, only above
    the budget): the capacity lies between the last rate that held and that rate, not at a point. (A point interval
    there made two names for one checkpoint 'higher' on the real service.)"""
    latency = np.full(400, 5.0)
    units = np.repeat(np.arange(4), 100)
    ok = np.zeros(400, dtype=np.bool_)
    held = slo.measure(80.0, TERMS, latency, ok, units, 4, 5.0)
    broken = slo.measure(160.0, TERMS, np.full(400, 40.0), ok, units, 4, 5.0, np.full(400, 30.0))
    assert held.met
    assert not broken.offered
    rate, low, high = slo.capacity_estimate([held, broken])
    assert rate == pytest.approx(80.0)
    assert low == pytest.approx(80.0)
    assert high == pytest.approx(160.0, rel=1e-3)


@pytest.mark.parametrize(
    ("terms", "timeout_s"),
    [(["p99<=250ms", "errors<=0.1%"], 1.0), (["p95<=2s"], 8.0), (["p99<=50ms"], 1.0), (["errors<=1%"], 10.0)],
)
def test_the_clients_timeout_follows_the_slos_latency_limit(terms: list[str], timeout_s: float) -> None:
    assert slo.client_timeout([slo.parse_term(text) for text in terms]) == pytest.approx(timeout_s)


def rate_point(rate: float, block_shares: list[float], per_block: int = 200) -> slo.RatePoint:
    """A point whose blocks each violate p99<=25ms in the given share of their requests (none fails)."""
    latency = np.concatenate([np.where(np.arange(per_block) < share * per_block, 40.0, 5.0) for share in block_shares])
    units = np.repeat(np.arange(len(block_shares)), per_block)
    count = len(latency)
    return slo.measure(rate, TERMS, latency, np.zeros(count, dtype=np.bool_), units, len(block_shares),
                       count / rate, np.zeros(count))  # fmt: skip


def test_a_break_not_shown_is_probed_once_at_twice_its_rate() -> None:
    search = slo.RateSearch(40.0)
    search.record(rate_point(40.0, [0.0] * 4))
    assert search.next_rate() == 80.0
    unsure = rate_point(80.0, [0.0, 0.0, 0.05, 0.6])  # broke on average, violations in late blocks only
    assert not unsure.met
    assert unsure.load_low <= 1.0  # not shown broken
    search.record(unsure)
    assert search.next_rate() == 160.0  # the probe: a rate that bounds the interval's high end
    search.record(rate_point(160.0, [0.5, 0.6, 0.7, 0.8]))
    assert search.shown_broken
    assert 40.0 < search.next_rate() < 80.0  # back to the bracket
    _, _, high = slo.capacity_estimate(search.points)
    assert 80.0 < high < 160.0  # from the rate shown broken, not twice the top rate


def test_a_probe_that_holds_discards_the_break_and_climbs_on() -> None:
    search = slo.RateSearch(40.0)
    search.record(rate_point(40.0, [0.0] * 4))
    search.record(rate_point(80.0, [0.0, 0.0, 0.0, 0.3]))
    assert search.next_rate() == 160.0
    search.record(rate_point(160.0, [0.0] * 4))
    assert search.broke is None
    assert search.next_rate() == 320.0
