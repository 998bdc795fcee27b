"""``--mode slo``: run the capacity search against a service, and write what it found (results.json, report.md and
report.html, latency_vs_rate.png and the cost table).

Each step is one Locust run in alternating blocks (an order drawn per round, seeded), every variant alone in its
block at its own open-loop Poisson arrival rate; the last step confirms each variant at its found rate with twice
the rounds. Besides its samples, a step reports the load generator's CPU over every block (several processes with
``--processes``) and what the service itself counted for each variant over the step (its Prometheus counters): a
rate that did not go out in full is the generator's fault ("at least") only with its CPU saturated or the service
idle over that variant's blocks, never while the service queued (``slo.shortfall``).
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app import markdown
from loadtests import analysis, slo, stats
from loadtests.measurements import GUARD_FRACTION, Samples
from loadtests.report import VERDICT_HEADER, verdict_rows
from loadtests.scrape import MetricSamples, delta

MAX_USERS = 1000
DEFAULT_ROUNDS = 4
SPAWN_SECONDS = 3.0  # before the first block: Locust starts, its users spawn (plus one second per extra process)
DESIGN = "SLO search: alternating blocks, each variant alone at its own Poisson arrival rate"
CONFIRMATION = "confirmation step: each variant at its own capacity, alternating blocks"
SEARCH = "every search step: paired by step and round, each variant at its own rate"


@dataclass(frozen=True)
class OpenLoop:
    """One step's schedule: Poisson arrivals at each block's own rate, from a fixed start, over K processes."""

    block_rates: list[float]
    users: int
    schedule_at: float
    processes: int = 1
    gap_seconds: float = 0.0  # quiet after each block: its requests are answered or time out before the next

    def seconds(self, block_seconds: float, blocks: int) -> float:
        """From the first block's start to the last's end."""
        return blocks * (block_seconds + self.gap_seconds) - self.gap_seconds


@dataclass(frozen=True)
class StepLoad:
    """What one step's run reports besides its samples."""

    cpu: float  # the load generator's CPU over the whole run, in cores per process
    block_cpu: list[float] = field(default_factory=list)  # the same per block of the order (empty: not measured)
    service: dict[str, slo.ServiceLoad] = field(default_factory=dict)  # per variant: the service's own account

    def generator_cpu(self, order: Sequence[str], variant: str) -> float:
        """The generator's CPU over ``variant``'s blocks (the whole run's when blocks were not measured)."""
        mine = [cpu for name, cpu in zip(order, self.block_cpu, strict=False) if name == variant]
        return float(np.mean(mine)) if mine and len(self.block_cpu) == len(order) else self.cpu


# (prefix, seed, block order, block seconds, schedule, seconds) -> what the step reported (a bare float: the
# generator's CPU over the run, in cores per process)
Runner = Callable[[Path, int, list[str], float, OpenLoop, float], "StepLoad | float"]


def block_cpu(
    trace: Sequence[tuple[float, float]],
    start: float,
    block_seconds: float,
    blocks: int,
    processes: int = 1,
    gap_seconds: float = 0.0,
) -> list[float]:
    """Per block, the load generator's CPU in cores per process, from a trace of (epoch time, CPU seconds used so
    far) taken while it ran: the CPU seconds used between the block's ends (interpolated) over its length (the
    quiet gap after it left out)."""
    if len(trace) < 2 or block_seconds <= 0 or blocks < 1:
        return []
    times = np.array([time for time, _ in trace])
    used = np.maximum.accumulate(np.array([seconds for _, seconds in trace]))
    opens = start + (block_seconds + gap_seconds) * np.arange(blocks)
    closes = opens + block_seconds
    if opens[0] < times[0] or closes[-1] > times[-1]:
        return []  # the trace does not cover the schedule
    spent = np.interp(closes, times, used) - np.interp(opens, times, used)
    return [float(value) for value in spent / block_seconds / max(1, processes)]


def service_loads(
    before: MetricSamples, after: MetricSamples, order: Sequence[str], block_seconds: float
) -> dict[str, slo.ServiceLoad]:
    """Per variant, what the service's Prometheus counters say it did between two scrapes around a step: its
    requests' queue wait and time in the service, its batches' compute, over the variant's own blocks."""
    found = {}
    for variant in dict.fromkeys(order):
        seconds = sum(1 for name in order if name == variant) * block_seconds
        found[variant] = slo.ServiceLoad(
            seconds=seconds,
            requests=delta(before, after, "xnli_queue_duration_seconds_count", variant=variant),
            queue_s=delta(before, after, "xnli_queue_duration_seconds_sum", variant=variant),
            service_s=delta(before, after, "xnli_request_duration_seconds_sum", variant=variant),
            device_s=delta(before, after, "xnli_inference_duration_seconds_sum", variant=variant),
        )
    return found


@dataclass
class SloOutcome:
    terms: list[slo.SloTerm]
    capacities: list[slo.Capacity]
    comparisons: list[stats.Comparison]
    points: dict[str, list[slo.RatePoint]] = field(default_factory=dict)
    generator_cpu: list[float] = field(default_factory=list)


def users_for(rates: Sequence[float], terms: Sequence[slo.SloTerm], timeout_s: float) -> int:
    """Enough users that the open loop is not throttled by answers in flight: each user has one request out at a
    time, so rate x (three times the latency limit) of them keep sending on time while the SLO holds."""
    limits = [term.limit_ms / 1000 for term in terms if term.kind == "latency"]
    hold = 3 * max(limits) if limits else min(timeout_s, 1.0)
    return int(min(MAX_USERS, max(4, math.ceil(max(rates) * max(0.5, hold)))))


def run_search(
    run: Runner,
    variants: list[str],
    terms: list[slo.SloTerm],
    raw: Path,
    *,
    start_rate: float,
    steps: int,
    rounds: int,
    block_seconds: float,
    processes: int,
    seed: int,
    alpha: float,
    timeout_s: float,
    gap_seconds: float = 0.0,
) -> tuple[dict[str, slo.RateSearch], list[Samples], list[float]]:
    """Every step of the search for every variant; every step's samples (the last: the confirmation); the
    generator's CPU per step. ``gap_seconds`` of quiet follow each block: with the client's timeout, no request
    of one variant is in flight during another's block (a saturated variant's backlog once held up its successor:
    the Locust users waiting on it sent the next variant's rate short, and its requests queued behind the backlog's
    batches, so that a twin following the slow variant more often was found short of capacity)."""
    searches = {variant: slo.RateSearch(start_rate) for variant in variants}
    k = len(variants)
    cpu: list[float] = []
    every: list[Samples] = []
    for step in range(steps + 1):
        confirming = step == steps
        rates = {v: s.confirmation_rate() if confirming else s.next_rate() for v, s in searches.items()}
        step_rounds = rounds * (2 if confirming else 1)
        order = stats.randomized_block_order(variants, step_rounds, seed + 1000 * (step + 1))
        lead = SPAWN_SECONDS + (processes - 1)
        schedule = OpenLoop(
            [rates[name] for name in order], users_for(list(rates.values()), terms, timeout_s), time.time() + lead,
            processes, gap_seconds,
        )  # fmt: skip
        prefix = raw / f"slo-step-{step}"
        shown = ", ".join(f"{name} {rate:.3g}/s" for name, rate in rates.items())
        print(f"slo step {step + 1}/{steps + 1}{' (confirmation)' if confirming else ''}: {shown}", flush=True)
        reported = run(
            prefix, seed + step, order, block_seconds, schedule, lead + schedule.seconds(block_seconds, len(order)) + 1
        )
        load = reported if isinstance(reported, StepLoad) else StepLoad(float(reported))
        cpu.append(load.cpu)
        samples = Samples.read_all(Path(f"{prefix}_samples.json"))
        every.append(samples)
        measured = samples.measured()
        seconds = step_rounds * block_seconds * (1 - GUARD_FRACTION)
        for index, variant in enumerate(samples.variants):
            mine = measured.subset(measured.variant == index)
            point = slo.measure(
                rates[variant], terms, mine.censored_ms(), ~mine.ok, mine.block // k, step_rounds, seconds,
                mine.queue_ms, alpha, load.generator_cpu(order, variant), confirming, load.service.get(variant),
            )  # fmt: skip
            searches[variant].record(point)
    return searches, every, cpu


def capacities(
    searches: dict[str, slo.RateSearch],
    slo_text: str,
    pairs_per_request: int,
    price_per_hour: float,
    peak: float,
    utilisation: float,
    hardware: str,
) -> list[slo.Capacity]:
    """Each variant's capacity in pairs/s, with its fleet size and cost per million predictions."""
    found = []
    for variant, search in searches.items():
        rate, low, high = slo.capacity_estimate(search.points)
        confirmation = search.points[-1]
        top = max(point.rate for point in search.points)
        notes = []
        if search.broke is None or search.generator_bound:  # no rate broke the SLO: a lower bound, no more
            held = [point for point in search.points if point.met]
            rate = max((min(point.rate, point.achieved) for point in held), default=0.0)
            low, high = rate, math.inf
        if search.generator_bound:
            why = next((p.why for p in reversed(search.points) if p.generator_bound and p.met), "")
            notes.append(f"generator-bound: at least {rate * pairs_per_request:.4g} pairs/s "
                         f"({why.removeprefix('generator-bound: ')})")  # fmt: skip
        for point in search.points:
            if point.short and not point.generator_bound:
                notes.append(f"at {point.rate:.4g} requests/s {point.why}")
        if search.broke is None:
            notes.append(f"the SLO held at every tested rate (up to {top:.4g} requests/s): at least that")
        if search.held is None:
            notes.append("the SLO broke at every tested rate")
        seen = {label for p in search.points for label, share in p.shares.items() if share > 0}
        unseen = [label for label in confirmation.shares if label not in seen]
        if unseen:
            notes.append(f"never violated, so not bounding the interval: {', '.join(unseen)}")
        pairs, pairs_low, pairs_high = (value * pairs_per_request for value in (rate, low, high))
        capacity = slo.Capacity(
            variant=variant, slo=slo_text, rate=pairs, ci_low=pairs_low, ci_high=pairs_high, requests_per_s=rate,
            pairs_per_request=pairs_per_request, p_latency_ms_at_rate=confirmation.quantile_ms,
            p50_ms_at_rate=confirmation.p50_ms, error_rate_at_rate=confirmation.error_rate,
            confirmed=confirmation.met, generator_bound=search.generator_bound, steps=len(search.points),
            hardware=hardware, note="; ".join(notes),
        )  # fmt: skip
        extra: dict[str, float] = {}
        if price_per_hour > 0:
            extra |= {
                "cost_per_million": slo.cost_per_million(price_per_hour, pairs),
                "cost_ci_low": slo.cost_per_million(price_per_hour, pairs_high),
                "cost_ci_high": slo.cost_per_million(price_per_hour, pairs_low),
            }
        if peak > 0:
            extra |= {
                "replicas": slo.replicas(peak, pairs, utilisation),
                "replicas_ci_low": slo.replicas(peak, pairs_high, utilisation),
                "replicas_ci_high": slo.replicas(peak, pairs_low, utilisation),
            }
        found.append(slo.Capacity(**{**asdict(capacity), **extra}))
    return found


def pair_comparisons(
    found: list[slo.Capacity], steps: list[Samples], rounds: int, margin: float, alpha: float, seed: int
) -> list[stats.Comparison]:
    """Capacity verdicts per pair; error-rate verdicts over every step (paired by step and round: each variant's
    block of a round ran beside the others', each at its own rate); tail verdicts from the confirmation step (each
    variant at its own capacity: at the rate it would be run at, is its tail longer?)."""
    results = []
    for i, a in enumerate(found):
        for b in found[i + 1 :]:
            word, difference, low, high = slo.capacity_verdict(a, b, margin)
            verdict = stats.Verdict(word, difference, low, high, a.rate, margin * a.rate, rounds)
            note = "; ".join(text for text in (a.note, b.note) if text)
            results.append(stats.comparison(a.variant, b.variant, "capacity", 0.0, verdict, alpha, DESIGN, note=note))
    names = steps[-1].variants
    k = len(names)
    units, codes, latency, failed = [], [], [], []
    for number, step in enumerate(steps):
        measured = step.measured()
        units.append(number * 2 * rounds + measured.block // k)
        codes.append(np.array([names.index(name) for name in step.variants], dtype=np.int64)[measured.variant])
        latency.append(measured.censored_ms())
        failed.append(~measured.ok)
    results += analysis.compare_pairs(
        steps[-1].variants, 0.0, np.concatenate(units), np.concatenate(codes), np.concatenate(latency),
        np.concatenate(failed), len(steps) * 2 * rounds, SEARCH, margin, alpha, ("error_rate",), seed=seed,
    )  # fmt: skip
    measured = steps[-1].measured()
    results += analysis.compare_pairs(
        steps[-1].variants, 0.0, measured.block // k, measured.variant, measured.censored_ms(), ~measured.ok,
        2 * rounds, CONFIRMATION, margin, alpha, ("p95_tail", "p99_tail"), seed=seed,
    )  # fmt: skip
    return results


def _number(value: float, digits: str = ".3g") -> str:
    return "-" if not math.isfinite(value) else format(value, digits)


CAPACITY_HEADER = ["variant", "capacity (pairs/s)", "interval", "p(SLO) ms at it", "p50 ms", "errors", "confirmed"]
COST_HEADER = ["variant", "hardware", "pairs/s", "replicas", "replicas (interval)", "$ / million", "interval"]


def _capacity_rows(found: Sequence[slo.Capacity]) -> list[list[str]]:
    return [
        [
            c.variant,
            ("at least " if c.generator_bound else "") + _number(c.rate),
            f"{_number(c.ci_low)} .. {_number(c.ci_high)}",
            _number(c.p_latency_ms_at_rate, ".1f"),
            _number(c.p50_ms_at_rate, ".1f"),
            f"{c.error_rate_at_rate:.2%}",
            "yes" if c.confirmed else "no",
        ]
        for c in found
    ]


def _cost_rows(found: Sequence[slo.Capacity]) -> list[list[str]]:
    return [
        [
            c.variant,
            c.hardware or "-",
            _number(c.rate),
            _number(c.replicas, ".0f"),
            f"{_number(c.replicas_ci_low, '.0f')} .. {_number(c.replicas_ci_high, '.0f')}",
            _number(c.cost_per_million, ".4g"),
            f"{_number(c.cost_ci_low, '.4g')} .. {_number(c.cost_ci_high, '.4g')}",
        ]
        for c in found
    ]


def sentences(outcome: SloOutcome, price_per_hour: float, peak: float, utilisation: float) -> list[str]:
    """The summary, every number taken from the results."""
    slo_text = ", ".join(term.text for term in outcome.terms)
    lines = []
    for c in outcome.capacities:
        bound = "at least " if c.generator_bound else ""
        line = (
            f"{c.variant} sustains {bound}{c.rate:.3g} pairs/s at the SLO ({slo_text}); interval {_number(c.ci_low)} "
            f"to {_number(c.ci_high)} pairs/s; confirmed at that rate: {'yes' if c.confirmed else 'no'} (measured "
            f"p(SLO) {_number(c.p_latency_ms_at_rate, '.1f')} ms, errors {c.error_rate_at_rate:.2%})."
        )
        if price_per_hour > 0:
            line += f" Cost per million predictions: {_number(c.cost_per_million, '.4g')}."
        if peak > 0:
            line += f" Replicas for {peak:g} pairs/s at {utilisation:.0%}: {_number(c.replicas, '.0f')}."
        if c.note:
            line += f" Note: {c.note}."
        lines.append(line)
    for verdict in outcome.comparisons:
        if verdict.metric == "capacity":
            lines.append(
                f"{verdict.b} vs {verdict.a}, capacity at the SLO: {verdict.verdict} ({verdict.difference:+.3g} "
                f"pairs/s, range {_number(verdict.ci_low)} to {_number(verdict.ci_high)})."
            )
    points = [point for found in outcome.points.values() for point in found]
    cpu = max([*outcome.generator_cpu, *(point.generator_cpu for point in points)], default=0.0)
    lines.append(
        f"Load generator CPU: at most {cpu:.0%} of a core per process over a variant's blocks"
        + (" (saturated: add --processes or a bigger machine)." if cpu >= slo.GENERATOR_CPU else ".")
    )
    return lines


def write(outcome: SloOutcome, folder: Path, parameters: dict[str, Any]) -> None:
    """results.json (parameters, capacity, comparisons, every rate point), report.md, report.html and the plot."""
    steps = [
        {"variant": variant, **{k: v for k, v in asdict(point).items() if not k.startswith("block_")},
         "budgets": None, "met": point.met}
        for variant, points in outcome.points.items() for point in points
    ]  # fmt: skip
    document = {
        "parameters": parameters,
        "slo": [asdict(term) for term in outcome.terms],
        "capacity": [asdict(c) for c in outcome.capacities],
        "comparisons": [asdict(c) for c in outcome.comparisons],
        "steps": steps,
        "generator_cpu": outcome.generator_cpu,
        "results": [],
    }
    (folder / "results.json").write_text(json.dumps(document, indent=2, default=str), encoding="utf-8")
    image = plot(outcome, folder)
    lines = sentences(
        outcome, float(parameters.get("price_per_hour") or 0), float(parameters.get("peak_rps") or 0),
        float(parameters.get("utilisation") or 0.7),
    )  # fmt: skip
    body = ["# xnli-serve capacity at an SLO", "", f"SLO: {', '.join(t.text for t in outcome.terms)}.", ""]
    body += ["## Summary", "", *[f"- {line}" for line in lines], ""]
    body += ["## Capacity", "", *markdown.table(CAPACITY_HEADER, _capacity_rows(outcome.capacities)), ""]
    body += ["## Fleet and cost", "", *markdown.table(COST_HEADER, _cost_rows(outcome.capacities)), ""]
    body += ["## Verdicts", "", *markdown.table(VERDICT_HEADER, verdict_rows(outcome.comparisons)), ""]
    body += [f"![{image}]({image})"]
    (folder / "report.md").write_text("\n".join(body) + "\n", encoding="utf-8")
    page = ["<!doctype html><html><head><meta charset='utf-8'><title>capacity at an SLO</title></head><body>"]
    page += ["<h1>xnli-serve capacity at an SLO</h1><ul>", *[f"<li>{html.escape(line)}</li>" for line in lines]]
    for title, head, rows in (
        ("Capacity", CAPACITY_HEADER, _capacity_rows(outcome.capacities)),
        ("Fleet and cost", COST_HEADER, _cost_rows(outcome.capacities)),
        ("Verdicts", VERDICT_HEADER, verdict_rows(outcome.comparisons)),
    ):
        page.append(f"</ul><h2>{title}</h2><table border=1><tr>")
        page += [f"<th>{html.escape(cell)}</th>" for cell in head]
        page += [
            "</tr>",
            *("<tr>" + "".join(f"<td>{html.escape(c.strip('*'))}</td>" for c in r) + "</tr>" for r in rows),
        ]
        page.append("</table><ul>")
    page.append(f"</ul><img src='{image}'></body></html>")
    (folder / "report.html").write_text("\n".join(page), encoding="utf-8")


def plot(outcome: SloOutcome, folder: Path) -> str:
    """Latency against offered rate per variant: p50 and the SLO's quantile at every tested rate, the SLO's limit,
    and the capacity found (with its interval)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latency_terms = [term for term in outcome.terms if term.kind == "latency"]
    figure, axis = plt.subplots(figsize=(8, 4.8))
    for index, (variant, points) in enumerate(outcome.points.items()):
        color = f"C{index}"
        ordered = sorted(points, key=lambda p: p.rate)
        rates = [p.rate for p in ordered]
        axis.plot(rates, [p.p50_ms for p in ordered], "--o", color=color, ms=3, label=f"{variant} p50")
        label = f"p{latency_terms[0].quantile * 100:g}" if latency_terms else "p99"
        axis.plot(rates, [p.quantile_ms for p in ordered], "-s", color=color, ms=4, label=f"{variant} {label}")
        found = next((c for c in outcome.capacities if c.variant == variant), None)
        if found and math.isfinite(found.requests_per_s):
            axis.axvline(found.requests_per_s, color=color, lw=1.2, alpha=0.8)
            low, high = (value / found.pairs_per_request for value in (found.ci_low, found.ci_high))
            if math.isfinite(low) and math.isfinite(high):
                axis.axvspan(low, high, color=color, alpha=0.08)
    for term in latency_terms:
        axis.axhline(term.limit_ms, color="black", lw=1, ls=":", label=f"SLO {term.text}")
    axis.set(xscale="log", yscale="log", xlabel="offered requests/s (Poisson)", ylabel="latency (ms)")
    axis.set_title("Latency against offered rate; vertical lines: capacity at the SLO (band: interval)")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(folder / "latency_vs_rate.png", dpi=110)
    plt.close(figure)
    return "latency_vs_rate.png"
