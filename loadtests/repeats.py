"""Replication across restarts (``--repeats N``) and planning a run (``--plan``).

One run is one sample of the variants' state: interleaving cancels only the drift the variants share. A variant's
own slow state (allocator growth, caches, a warm-up that differs, where a process happened to land) moves its
latency for the whole run, and nothing inside the run can tell it from a real difference: the block intervals
cover within-run noise only. Restarting the variants' processes between runs draws that state afresh, so the
spread of the run-level differences measures it.

With N > 1 runs every verdict rests on the N run-level differences (each run's own paired block estimate): their
mean gets a Student t interval with N - 1 degrees of freedom, and the equivalence test uses the same. The report
gives the two variance components of a run's difference: *within* (the mean squared standard error of the runs'
block estimates: noise that a longer run shrinks) and *between* (the variance of the run-level differences beyond
it: state that only more restarts average out).

``--plan`` reads what a pilot measured (the standard error of each verdict's difference) and says how long a run,
or how many runs, would bring the minimum detectable effect down to a chosen margin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from statistics import NormalDist
from typing import Any

import numpy as np

from loadtests import analysis, stats
from loadtests.stats import Comparison
from loadtests.student_t import t_ppf

WORDS = {"error_rate": ("lower", "higher")}
HIGHER_IS_BETTER = ("pairs_per_s", "capacity")
RELATIVE_METRICS = ("p50_ms", "pairs_per_s", "capacity")  # margins are a share of a's level (the rest: absolute)


def combine(runs: Sequence[Sequence[Comparison]], alpha: float, restarted: bool) -> list[Comparison]:
    """One verdict per (level, a, b, metric) from the runs' verdicts: a t interval over the run-level differences,
    within- and between-run variance. ``not_saturated`` in any run stays ``not_saturated`` (no throughput claim)."""
    if len(runs) == 1:
        return list(runs[0])
    keyed: dict[tuple[float, str, str, str], list[Comparison]] = {}
    for verdicts in runs:
        for c in verdicts:
            keyed.setdefault((c.level, c.a, c.b, c.metric), []).append(c)
    how = "processes restarted between runs" if restarted else "one service (--url): runs without restart"
    combined = []
    for (_, _, _, metric), each in keyed.items():
        baselines = np.array([c.baseline for c in each], dtype=np.float64)
        differences = np.array([c.difference for c in each], dtype=np.float64)
        margins = np.array([c.margin for c in each], dtype=np.float64)
        errors = np.array([c.standard_error for c in each], dtype=np.float64)
        verdict = stats.paired_verdict(
            baselines, baselines + differences, alpha=alpha, higher_is_better=metric in HIGHER_IS_BETTER,
            words=WORDS.get(metric, ("faster", "slower")), absolute_margin=float(np.nanmean(margins)),
            autocorrelation=False,
        )  # fmt: skip
        first = each[0]
        merged = stats.comparison(
            first.a, first.b, metric, first.level, verdict, alpha, first.design, first.threshold_ms,
            note="; ".join(x for x in (first.note, f"{len(each)} runs, {how}") if x),
        )  # fmt: skip
        within = float(np.nanmean(errors**2)) if np.isfinite(errors).any() else math.nan
        spread = float(np.var(differences[np.isfinite(differences)], ddof=1)) if verdict.blocks >= 2 else math.nan
        if any(c.verdict == stats.NOT_SATURATED for c in each):
            merged = replace(merged, verdict=stats.NOT_SATURATED)
        combined.append(
            replace(
                merged,
                runs=len(each),
                within_variance=within,
                between_variance=max(0.0, spread - within) if math.isfinite(spread + within) else spread,
            )
        )
    return analysis.failures_are_not_speed(combined)


def comparison_from(row: dict[str, Any]) -> Comparison:
    """A verdict as results.json stores it (older files lack the newer fields)."""
    known = {field.name for field in fields(Comparison)}
    return Comparison(**{key: value for key, value in row.items() if key in known})


@dataclass(frozen=True)
class PlanRow:
    """What one verdict of a pilot needs for its minimum detectable effect to reach the target margin."""

    comparison: Comparison
    target: float  # the absolute difference to detect with 80% power (and to test equivalence within)
    scale: float  # (pilot standard error / the standard error needed)^2: how many times more data per run
    duration_s: float  # interleaved: seconds per level; capacity: nan
    rounds: float  # capacity: rounds per level; interleaved: nan
    repeats: int  # runs needed at the pilot's length (when the pilot had runs to measure between-run variance)


def _target(c: Comparison, margin: float | None) -> float:
    if margin is not None and c.metric in RELATIVE_METRICS and math.isfinite(c.baseline):
        return margin * abs(c.baseline)
    return c.margin


def runs_needed(between: float, target: float, alpha: float, power: float = stats.POWER) -> int:
    """The fewest runs whose t test over run-level differences of variance ``between`` finds ``target`` with
    ``power`` at ``alpha`` (capped at 1000)."""
    if not math.isfinite(between) or not math.isfinite(target) or target <= 0:
        return 0
    for n in range(2, 1001):
        if (t_ppf(1 - alpha / 2, n - 1) + t_ppf(power, n - 1)) * math.sqrt(between / n) <= target:
            return n
    return 1000


def plan(
    comparisons: Sequence[Comparison], duration_s: float, rounds: int, margin: float | None, power: float = stats.POWER
) -> list[PlanRow]:
    """For every pilot verdict: the run length (or runs) at which its minimum detectable effect is ``margin`` (a
    share of a's level for median, throughput and capacity; the pilot's own absolute margins for tail and error
    shares when ``margin`` is None or for those metrics). The standard error of a mean over blocks falls as the
    square root of the data, so the length scales with (SE / SE needed)^2 (normal quantiles: a long run has many
    blocks)."""
    rows = []
    for c in comparisons:
        target = _target(c, margin)
        alpha = 1 - c.confidence
        needed = target / (NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power))
        error = c.standard_error
        if c.runs > 1 and math.isfinite(c.within_variance):
            error = math.sqrt(c.within_variance)  # one run's own noise: what a longer run shrinks
        scale = (error / needed) ** 2 if math.isfinite(error) and needed > 0 else math.nan
        interleaved = c.design == stats.INTERLEAVED
        pilot_seconds = duration_s * max(1, c.look)  # --until-decided pilots: the looks they took
        pilot_rounds = (rounds or c.blocks) * max(1, c.look)
        repeats = 0
        if c.runs > 1:
            repeats = runs_needed(c.between_variance + c.within_variance, target, alpha, power)
        rows.append(
            PlanRow(
                comparison=c,
                target=target,
                scale=scale,
                duration_s=pilot_seconds * scale if interleaved else math.nan,
                rounds=math.ceil(pilot_rounds * scale) if not interleaved and math.isfinite(scale) else math.nan,
                repeats=repeats,
            )
        )
    return rows


def _share(metric: str) -> bool:
    return metric not in RELATIVE_METRICS


def plan_lines(rows: Sequence[PlanRow], duration_s: float, rounds: int) -> list[str]:
    """The plan as sentences, the longest need last (that length decides every verdict of the report)."""
    lines = []
    for row in rows:
        c = row.comparison
        amount = f"{row.target * 100:.2f} pts"
        if not _share(c.metric):
            amount = f"{row.target:.3g} ({row.target / abs(c.baseline):.1%} of a)"
        pilot = f"pilot MDE {c.mde * 100:.2f} pts" if _share(c.metric) else f"pilot MDE {c.mde_pct:.1f}%"
        if math.isfinite(row.duration_s):
            need = f"{row.duration_s:.0f} s per level (pilot {duration_s:g} s)"
        elif math.isfinite(row.rounds):
            need = f"{row.rounds:.0f} rounds per level (pilot {rounds})"
        else:
            need = "unknown (the pilot measured no spread)"
        if row.repeats:
            need += f"; with restarts: {row.repeats} runs of the pilot's length"
        lines.append(f"At {c.level:g}, {c.b} vs {c.a} on {c.metric}: to detect {amount} ({pilot}): {need}.")
    finite = [row for row in rows if math.isfinite(row.scale)]
    if finite:
        worst = max(finite, key=lambda row: row.scale)
        what = (
            f"{worst.duration_s:.0f} s per level"
            if math.isfinite(worst.duration_s)
            else f"{worst.rounds:.0f} rounds per level"
        )
        lines.append(f"Every verdict at its margin needs {what} (set by {worst.comparison.b} vs {worst.comparison.a} "
                     f"on {worst.comparison.metric}).")  # fmt: skip
    return lines
