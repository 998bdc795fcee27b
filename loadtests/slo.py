"""Capacity at a latency SLO: the highest open-loop Poisson arrival rate a variant sustains while every SLO term
holds, with an interval, a verdict per pair, and what it means for a fleet (replicas, cost per million predictions).

An SLO is a list of terms, each a share of requests allowed to violate it:

- ``p99<=250ms``: at most 1% of requests take longer than 250 ms (a request that failed, was refused or timed out
  violates it: it got no answer in time);
- ``errors<=0.1%``: at most 0.1% of requests fail, are refused or time out.

At one offered rate, each of the variant's blocks gives the share of its requests violating each term; the point
estimate is the mean over blocks, and its interval the Student t interval over blocks, never narrower than the
Wilson interval of the pooled counts (a run with no violation at all is not proof of none). ``load`` is each term's
share over its budget: the SLO holds at a rate when every term's load is at most 1.

The search (``RateSearch``) runs every variant at its own rate in each step (alternating blocks in an order drawn
per round, as capacity mode, so drift falls on all): doubling (or halving) until the SLO breaks (or holds), then
bisecting in log-rate between the highest rate that held and the lowest that broke; a confirmation step at the found
rate follows. The capacity is where the load curve crosses 1: the measured points made monotone (pool adjacent
violators, since more load can only hurt), interpolated in log-rate; its interval is where the curves of the load's
interval bounds cross 1.

A rate that did not go out in full (fewer requests than the offered rate allows for, beyond Poisson noise) is judged
from what the service itself reported over the variant's blocks (``ServiceLoad``: its Prometheus counters, or the
answers' X-Queue-Time headers without them) and from the load generator's CPU (``shortfall``): while the service
queued (queue wait at least half of a request's time in the service, or its device busy 80% of the time) the rate
was the service's to absorb and the SLO broke there, whatever the generator did; otherwise the shortfall is the
generator's (*generator-bound*, the capacity "at least" the highest rate that held) only when its CPU was saturated
or the service sat idle (queue wait under a fifth of that time, device busy under half of it). Anything between
counts against the service.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from loadtests.outcomes import DEFAULT_TIMEOUT_S
from loadtests.stats import FloatArray, IntArray
from loadtests.student_t import t_ppf

PAIR_METRICS = ("capacity", "error_rate", "tail")  # the verdicts of one pair in SLO mode (Bonferroni divisor)
GENERATOR_SHORTFALL = 0.9  # achieved below this share of the offered rate: the offered load did not happen
GENERATOR_CPU = 0.9  # share of a core per load-generator process above which it counts as saturated
SERVICE_QUEUE_SHARE = 0.5  # queue wait at least this share of the time requests spent in the service: it queued
SERVICE_BUSY = 0.8  # device busy at least this share of the variant's time: it was saturated
IDLE_QUEUE_SHARE = 0.2  # the service sat idle: queue wait under this share of the time in the service ...
IDLE_BUSY = 0.5  # ... and its device busy under this share of the variant's time (unknown: not counted)
TIMEOUT_PER_LIMIT = 4.0  # the client's default timeout in SLO mode, in multiples of the longest latency limit ...
MIN_TIMEOUT_S = 1.0  # ... and at least this


@dataclass(frozen=True)
class SloTerm:
    """One term: ``quantile`` of the latency at most ``limit_ms``, or (kind errors) at most ``budget`` failures."""

    text: str
    kind: str  # "latency" or "errors"
    budget: float  # share of requests allowed to violate the term
    quantile: float = math.nan  # latency terms: e.g. 0.99
    limit_ms: float = math.nan  # latency terms

    @property
    def label(self) -> str:
        return self.text.replace(" ", "")


_LATENCY = re.compile(r"^p(\d+(?:\.\d+)?)\s*<=\s*(\d+(?:\.\d+)?)\s*(ms|s)$")
_ERRORS = re.compile(r"^errors\s*<=\s*(\d+(?:\.\d+)?)\s*(%?)$")


def parse_term(text: str) -> SloTerm:
    """``p99<=250ms``, ``p99.9<=1s``, ``errors<=0.1%`` (or ``errors<=0.001``)."""
    cleaned = text.strip().lower()
    latency = _LATENCY.match(cleaned)
    if latency:
        quantile = float(latency.group(1)) / 100
        limit = float(latency.group(2)) * (1000.0 if latency.group(3) == "s" else 1.0)
        if not 0 < quantile < 1 or limit <= 0:
            raise ValueError(f"SLO term {text!r}: the quantile must be in (0, 100) and the limit positive")
        return SloTerm(text.strip(), "latency", 1 - quantile, quantile, limit)
    errors = _ERRORS.match(cleaned)
    if errors:
        budget = float(errors.group(1)) / (100.0 if errors.group(2) else 1.0)
        if not 0 < budget < 1:
            raise ValueError(f"SLO term {text!r}: the error budget must be in (0, 1)")
        return SloTerm(text.strip(), "errors", budget)
    raise ValueError(f"SLO term {text!r}: expected e.g. 'p99<=250ms' or 'errors<=0.1%'")


def client_timeout(terms: Sequence[SloTerm]) -> float:
    """The client's default timeout for an SLO: a few times its longest latency limit (an answer later than that
    violates the SLO whenever it comes, and a client that waits longer only lets a saturated variant's backlog
    grow into the next block), or the plain default without a latency term."""
    limits = [term.limit_ms / 1000 for term in terms if term.kind == "latency"]
    return max(MIN_TIMEOUT_S, TIMEOUT_PER_LIMIT * max(limits)) if limits else DEFAULT_TIMEOUT_S


def wilson(hits: float, n: float, z: float) -> tuple[float, float]:
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def share_interval(violated: np.ndarray, units: IntArray, n_units: int, alpha: float) -> tuple[float, float, float]:
    """Mean over units of each unit's share of violating requests, and its (1 - alpha) interval: the t interval
    over units, widened to at least the Wilson interval of the pooled counts."""
    counts = np.bincount(units, minlength=n_units)[:n_units].astype(np.float64)
    hits = np.bincount(units, weights=violated.astype(np.float64), minlength=n_units)[:n_units]
    present = counts > 0
    shares = hits[present] / counts[present]
    n = len(shares)
    if n == 0:
        return math.nan, 0.0, 1.0
    point = float(np.mean(shares))
    z = NormalDist().inv_cdf(1 - alpha / 2)
    low, high = wilson(float(hits.sum()), float(counts.sum()), z)
    if n >= 2:
        half = t_ppf(1 - alpha / 2, n - 1) * float(np.std(shares, ddof=1)) / math.sqrt(n)
        low, high = min(low, point - half), max(high, point + half)
    return point, max(0.0, low), min(1.0, high)


@dataclass(frozen=True)
class ServiceLoad:
    """What the service itself did for one variant over its blocks of one step: sums over its requests and batches
    in ``seconds`` of the variant's own time (its blocks, alone on the service)."""

    seconds: float
    requests: float  # answered by the engine
    queue_s: float  # summed over requests: waiting for the device (xnli_queue_duration_seconds)
    service_s: float  # summed over requests: time inside the service (xnli_request_duration_seconds)
    device_s: float = math.nan  # summed over batches: compute (xnli_inference_duration_seconds); nan: unknown
    source: str = "metrics"  # "metrics" (the service's Prometheus counters) or "headers" (X-Queue-Time)

    @property
    def queue_share(self) -> float:
        """Share of the requests' time in the service spent waiting for the device."""
        return self.queue_s / self.service_s if self.service_s > 0 else 0.0

    @property
    def busy(self) -> float:
        """Share of the variant's time the device computed its batches."""
        return self.device_s / self.seconds if self.seconds > 0 else math.nan

    @property
    def in_flight(self) -> float:
        """Mean number of the variant's requests inside the service (Little's law)."""
        return self.service_s / self.seconds if self.seconds > 0 else 0.0

    @property
    def queued(self) -> float:
        """Mean number of the variant's requests waiting for the device (Little's law: the mean queue depth)."""
        return self.queue_s / self.seconds if self.seconds > 0 else 0.0

    @property
    def queues(self) -> bool:
        """The service could not keep up: requests waited for the device much of their time, or it never rested."""
        return self.queue_share >= SERVICE_QUEUE_SHARE or (math.isfinite(self.busy) and self.busy >= SERVICE_BUSY)

    @property
    def idle(self) -> bool:
        """The service had room: little waiting and a device that rested (unknown device time: waiting alone)."""
        rested = not math.isfinite(self.busy) or self.busy < IDLE_BUSY
        return self.requests > 0 and self.queue_share < IDLE_QUEUE_SHARE and rested

    def describe(self) -> str:
        busy = f", device busy {self.busy:.0%}" if math.isfinite(self.busy) else ""
        return (
            f"queue wait {self.queue_share:.0%} of the time in the service{busy}, {self.in_flight:.1f} in flight, "
            f"{self.queued:.1f} waiting ({self.source})"
        )


def headers_load(latency_ms: FloatArray, queue_ms: FloatArray, seconds: float) -> ServiceLoad:
    """A ServiceLoad from the answered requests' X-Queue-Time, for a service whose metrics could not be read: the
    client's latency stands for the time in the service (it adds HTTP, so the queue's share comes out lower, never
    higher), and device time stays unknown (a request's X-Inference-Time counts batches shared with others)."""
    return ServiceLoad(seconds, float(len(latency_ms)), float(np.sum(queue_ms)) / 1000,
                       float(np.sum(latency_ms)) / 1000, source="headers")  # fmt: skip


def shortfall(short: bool, generator_cpu: float, service: ServiceLoad | None) -> tuple[bool, str]:
    """Whose fault a rate that did not go out in full was: (generator-bound, why). The service's own evidence comes
    first: a service that queued could not absorb the rate, whatever the generator did. The generator is blamed only
    when its CPU was saturated or the service sat idle; without evidence either way the shortfall counts against
    the service (an "at least" capacity must not rest on a guess)."""
    if not short:
        return False, ""
    if service is not None and service.queues:
        return False, f"service-bound: short of the offered rate while the service queued ({service.describe()})"
    if generator_cpu >= GENERATOR_CPU:
        return True, f"generator-bound: its CPU was saturated ({generator_cpu:.0%} of a core per process)"
    if service is not None and service.idle:
        return True, f"generator-bound: short of the offered rate while the service sat idle ({service.describe()})"
    seen = service.describe() if service is not None else "no evidence from the service"
    return False, f"short of the offered rate, generator CPU {generator_cpu:.0%}, service neither idle nor queueing " \
        f"({seen}): counted against the service"  # fmt: skip


@dataclass
class RatePoint:
    """What one variant did at one offered rate (one search step)."""

    rate: float  # offered requests/s
    achieved: float  # requests sent per second (what the generator managed)
    completed: float  # answered requests per second
    requests: int
    blocks: int
    load: float  # max over terms of violating share / budget: the SLO holds where <= 1
    load_low: float
    load_high: float
    shares: dict[str, float]  # per term
    p50_ms: float
    quantile_ms: float  # the first latency term's quantile (censored at the timeout)
    error_rate: float
    queue_ms: float  # the service's median queue time (X-Queue-Time of answered requests)
    generator_bound: bool = False
    generator_cpu: float = 0.0  # the load generator's CPU over the variant's blocks, in cores per process
    service: ServiceLoad | None = None  # what the service reported over the variant's blocks
    why: str = ""  # a shortfall: whose it was, and the evidence
    confirmation: bool = False
    short: bool = False  # fewer requests went out than the offered rate allows for, beyond Poisson noise
    block_counts: FloatArray = field(default_factory=lambda: np.zeros(0))  # requests per block
    block_loads: FloatArray = field(default_factory=lambda: np.zeros((0, 0)))  # (terms, blocks): violations/budget
    budgets: FloatArray = field(default_factory=lambda: np.ones(0))  # per term
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)  # per term: the load's interval

    @property
    def offered(self) -> bool:
        """The rate went out (or only the generator fell short): a shortfall with the service queueing means the
        service could not absorb the rate, and the SLO broke there."""
        return not self.short or self.generator_bound

    @property
    def met(self) -> bool:
        return self.load <= 1.0 and self.offered


def measure(
    rate: float,
    terms: Sequence[SloTerm],
    latency_ms: FloatArray,
    failed: np.ndarray,
    units: IntArray,
    n_units: int,
    seconds: float,
    queue_ms: FloatArray | None = None,
    alpha: float = 0.05,
    generator_cpu: float = 0.0,
    confirmation: bool = False,
    service: ServiceLoad | None = None,
) -> RatePoint:
    """One rate point from a variant's requests (latencies censored at the timeout where ``failed``) in its
    ``n_units`` blocks of ``seconds`` measured time in all. A shortfall is judged by ``shortfall`` from the load
    generator's CPU over those blocks and ``service`` (without it: the answers' X-Queue-Time headers, ``queue_ms``)."""
    loads, lows, highs, shares, bounds = [], [], [], {}, {}
    counts = np.bincount(units, minlength=n_units)[:n_units].astype(np.float64)
    block_loads = np.zeros((len(terms), n_units))
    for index, term in enumerate(terms):
        violated = failed if term.kind == "errors" else (latency_ms > term.limit_ms) | failed
        block_loads[index] = np.bincount(units, weights=violated.astype(np.float64), minlength=n_units)[:n_units]
        block_loads[index] /= term.budget
        _, low, high = share_interval(violated, units, n_units, alpha)
        pooled = float(np.sum(violated)) / max(1, len(violated))
        shares[term.label] = pooled
        bounds[term.label] = (low / term.budget, high / term.budget)
        loads.append(pooled / term.budget)
        lows.append(low / term.budget)
        highs.append(high / term.budget)
    latency_terms = [term for term in terms if term.kind == "latency"]
    q = latency_terms[0].quantile if latency_terms else 0.99
    n = len(latency_ms)
    achieved = n / seconds if seconds else 0.0
    queue = float(np.median(queue_ms[~failed])) if queue_ms is not None and np.any(~failed) else math.nan
    expected = rate * seconds
    short = n < expected - max((1 - GENERATOR_SHORTFALL) * expected, 3 * math.sqrt(expected))
    if service is None and queue_ms is not None:
        service = headers_load(latency_ms[~failed], queue_ms[~failed], seconds)
    bound, why = shortfall(short, generator_cpu, service)
    return RatePoint(
        rate=rate,
        achieved=achieved,
        completed=float(np.sum(~failed)) / seconds if seconds else 0.0,
        requests=n,
        blocks=n_units,
        load=max(loads) if loads else 0.0,
        load_low=max(lows) if lows else 0.0,
        load_high=max(highs) if highs else 0.0,
        shares=shares,
        p50_ms=float(np.median(latency_ms)) if n else math.nan,
        quantile_ms=float(np.quantile(latency_ms, q)) if n else math.nan,
        error_rate=float(np.mean(failed)) if n else math.nan,
        queue_ms=queue,
        generator_bound=bound,
        generator_cpu=generator_cpu,
        service=service,
        why=why,
        confirmation=confirmation,
        short=short,
        block_counts=counts,
        block_loads=block_loads,
        budgets=np.array([term.budget for term in terms]),
        bounds=bounds,
    )


@dataclass
class RateSearch:
    """Where the next step of one variant's search goes: double (halve) until the SLO breaks (holds), then bisect
    in log-rate; a generator-bound rate that held stops the climb. A break that is not *shown* (the load's lower
    bound still at most 1: an overload whose violations pile up late in each block) is probed once at twice that
    rate, so that the interval's high end rests on a rate shown broken rather than on "twice the top rate"."""

    start: float
    factor: float = 2.0
    minimum: float = 0.25
    points: list[RatePoint] = field(default_factory=list)
    held: float | None = None  # highest rate that met the SLO
    broke: float | None = None  # lowest rate that did not
    generator_bound: bool = False
    bound_at: float = math.nan  # the highest rate that met the SLO with the generator short of it

    @property
    def shown_broken(self) -> bool:
        """Some tested rate broke the SLO beyond doubt: its load's lower bound above 1, or a rate the service could
        not absorb."""
        return any(not point.offered or point.load_low > 1.0 for point in self.points)

    def next_rate(self) -> float:
        if not self.points:
            return self.start
        if self.held is None:
            return max(self.minimum, self.points[-1].rate / self.factor)
        if self.broke is None:
            return self.held if self.generator_bound else self.held * self.factor
        probe = self.broke * self.factor
        if not self.shown_broken and max(point.rate for point in self.points) < probe:
            return probe
        return self._between(self.held, self.broke)

    def _between(self, held: float, broke: float) -> float:
        """Inside the bracket: where the line through the two bracketing points (log-rate, log-load) crosses 1
        (regula falsi: the steps land near the capacity, so little rests on interpolation), kept within its inner
        80% so that every step still narrows the bracket."""
        loads = {point.rate: point.load if point.offered else 100.0 for point in self.points}
        guess = crossing([held, broke], [max(loads.get(held, 0.0), 1e-3), max(loads.get(broke, 2.0), 1e-3)])
        ratio = broke / held
        low, high = held * ratio**0.1, held * ratio**0.9
        return min(max(guess, low), high) if math.isfinite(guess) and guess > 0 else math.sqrt(held * broke)

    def record(self, point: RatePoint) -> None:
        self.points.append(point)
        if point.met:
            self.held = point.rate if self.held is None else max(self.held, point.rate)
            if self.broke is not None and self.held >= self.broke:  # it held above where it broke: climb on
                self.broke = None
            if point.generator_bound:
                self.generator_bound = True
                self.bound_at = point.rate if math.isnan(self.bound_at) else max(self.bound_at, point.rate)
        else:
            if self.generator_bound and point.rate <= self.bound_at:  # the service broke where the generator was
                self.generator_bound = False  # blamed: the service's limit was reached there after all
            self.broke = point.rate if self.broke is None else min(self.broke, point.rate)
            if self.held is not None and self.held >= self.broke:  # a noisy reversal: keep the bracket sane
                self.held = None if point.rate <= self.minimum else self.broke / self.factor

    def confirmation_rate(self) -> float:
        found = point_capacity(self.points)
        return found if math.isfinite(found) and found > 0 else (self.held or self.minimum)


def _monotone(values: Sequence[float]) -> list[float]:
    """Pool adjacent violators: the non-decreasing sequence closest (least squares) to ``values``."""
    blocks: list[list[float]] = []  # [sum, count]
    for value in values:
        blocks.append([value, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    result: list[float] = []
    for total, count in blocks:
        result += [total / count] * int(count)
    return result


def crossing(rates: Sequence[float], loads: Sequence[float]) -> float:
    """Where a non-decreasing load curve (over increasing rates) crosses 1, interpolated in log-rate and log-load;
    0 when it is above 1 everywhere, inf when below 1 everywhere."""
    if not rates:
        return math.nan
    if loads[0] > 1.0:
        return 0.0
    for index in range(1, len(rates)):
        if loads[index] > 1.0:
            low_rate, high_rate = rates[index - 1], rates[index]
            low_load, high_load = max(loads[index - 1], 1e-3), max(loads[index], 1e-3)
            if high_load <= low_load:
                return low_rate
            fraction = -math.log(low_load) / (math.log(high_load) - math.log(low_load))
            return math.exp(math.log(low_rate) + fraction * (math.log(high_rate) - math.log(low_rate)))
    return math.inf


CEILING = 2.0  # a load curve that never reaches 1 puts the capacity at "more than the top rate": drawn as 2x it


def _load_curve(points: Sequence[RatePoint], loads: Sequence[float]) -> float:
    rates = [p.rate for p in points]
    found = crossing(rates, _monotone(loads))
    return min(found, CEILING * rates[-1]) if rates else math.nan


def point_capacity(points: Sequence[RatePoint]) -> float:
    """Where the measured load curve of one variant crosses 1 (requests/s)."""
    ordered = sorted(points, key=lambda p: p.rate)
    return _load_curve(ordered, [p.load if p.offered else math.inf for p in ordered]) if ordered else math.nan


def capacity_estimate(points: Sequence[RatePoint]) -> tuple[float, float, float]:
    """(capacity, interval low, interval high) in requests/s from every rate point of one variant: where the
    measured load curve crosses 1, and (``shown_bounds``, test inversion) the highest tested rate at which the SLO
    is shown met and the lowest at which it is shown broken. Terms never violated at any tested rate are left out
    of the bounds (nothing was seen that could place them; the report says so)."""
    ordered = sorted(points, key=lambda p: p.rate)
    if not ordered:
        return math.nan, math.nan, math.nan
    estimate = point_capacity(ordered)
    seen = np.sum([p.block_loads.sum(axis=1) for p in ordered if p.block_loads.size], axis=0) > 0
    lows, highs = [], []
    for point in ordered:
        if not point.offered:  # broken (the service could not absorb the rate) by an unknown margin:
            lows.append(1.0 + 1e-9)  # the interval's high end may reach this rate,
            highs.append(math.inf)  # and its low end starts right after the last rate that held
            continue
        bounds = [point.bounds[label] for label, keep in zip(point.shares, np.atleast_1d(seen), strict=False) if keep]
        lows.append(max((low for low, _ in bounds), default=0.0))
        highs.append(max((high for _, high in bounds), default=0.0))
    return (estimate, *shown_bounds([p.rate for p in ordered], lows, highs, estimate))


def shown_bounds(
    rates: Sequence[float], lows: Sequence[float], highs: Sequence[float], estimate: float
) -> tuple[float, float]:
    """The capacity's interval from the load's pointwise interval bounds at the tested ``rates`` (increasing), by
    test inversion under "more load can only hurt": the SLO is shown met at a rate when the load's upper bound there
    or at any higher tested rate is at most 1 (the envelope ``min`` from the right), and shown broken when the lower
    bound there or at any lower tested rate is above 1 (``max`` from the left). Each end is where its envelope
    crosses 1, interpolated in log-rate and log-load as the estimate is; 0, or CEILING x the top rate, where none.

    No curve is fitted to the bounds themselves: an upper bound falls as requests accumulate, so a monotone fit
    pooled the first rates' few requests (whose bounds stay above 1 however clean: 0 violations in 300 requests do
    not prove p99) with the later rates' many, and put the low end at 0 whatever the later rates showed."""
    if not rates:
        return math.nan, math.nan
    met = list(itertools.accumulate(reversed(highs), min))[::-1]
    broken = list(itertools.accumulate(lows, max))
    ceiling = CEILING * max(rates)
    low, high = (min(crossing(rates, curve), ceiling) for curve in (met, broken))
    return min(low, high, estimate), max(low, high, estimate)


@dataclass(frozen=True)
class Capacity:
    """One variant's capacity at the SLO, as results.json's ``capacity`` entries carry it."""

    variant: str
    slo: str
    rate: float  # pairs/s sustained at the SLO (generator-bound: at least this)
    ci_low: float
    ci_high: float
    requests_per_s: float
    pairs_per_request: int
    p_latency_ms_at_rate: float  # the SLO's latency quantile measured at the confirmation step
    p50_ms_at_rate: float
    error_rate_at_rate: float
    confirmed: bool  # the confirmation step at the found rate met the SLO
    generator_bound: bool
    steps: int
    cost_per_million: float = math.nan  # price per hour / (3600 x pairs/s) x 1e6
    cost_ci_low: float = math.nan
    cost_ci_high: float = math.nan
    replicas: float = math.nan  # for --peak-rps at --utilisation
    replicas_ci_low: float = math.nan
    replicas_ci_high: float = math.nan
    hardware: str = ""
    note: str = ""


def cost_per_million(price_per_hour: float, pairs_per_s: float) -> float:
    """What a million predictions cost on hardware priced per hour that sustains ``pairs_per_s`` at the SLO."""
    if pairs_per_s <= 0 or not math.isfinite(pairs_per_s):
        return math.inf if pairs_per_s <= 0 else 0.0
    return price_per_hour / (3600.0 * pairs_per_s) * 1e6


def replicas(peak: float, pairs_per_s: float, utilisation: float) -> float:
    """Replicas needed to carry ``peak`` pairs/s with each at ``utilisation`` of its capacity at the SLO."""
    if pairs_per_s <= 0:
        return math.inf
    if not math.isfinite(pairs_per_s):
        return 1.0
    return float(math.ceil(peak / (pairs_per_s * utilisation)))


def capacity_verdict(a: Capacity, b: Capacity, margin: float) -> tuple[str, float, float, float]:
    """(verdict, difference, low, high) of b's capacity against a's from their intervals: the difference lies
    within [b low - a high, b high - a low] whenever both intervals hold. ``higher`` / ``lower`` when that range
    excludes 0, ``equivalent`` when it lies within +-margin of a's capacity, else ``inconclusive``. Conservative
    (two intervals combined by their ends); a generator-bound capacity is only a lower bound: it can be shown
    higher, never lower or equivalent."""
    difference = b.rate - a.rate
    low, high = b.ci_low - a.ci_high, b.ci_high - a.ci_low
    if math.isnan(difference) or math.isnan(low) or math.isnan(high):
        return "inconclusive", difference, low, high
    absolute = margin * abs(a.rate)
    if low > 0 and not a.generator_bound:
        return "higher", difference, low, high
    if high < 0 and not b.generator_bound:
        return "lower", difference, low, high
    if -absolute < low and high < absolute and not (a.generator_bound or b.generator_bound):
        return "equivalent", difference, low, high
    return "inconclusive", difference, low, high
