"""Statistics for comparing variants under load, from block-level data (no Locust, no I/O: unit-testable).

Latencies measured one after another are not independent samples: the machine drifts (thermal, caches, other
processes), shifts level, and consecutive requests share its state. So nothing here resamples single requests.

- **Interleaved** runs (the default) send every variant's requests in one time window. The window is cut into time
  blocks; each block gives one value per variant (``loadtests.analysis``: a median over equal counts, a tail share,
  an error share), and the per-block differences ``b - a`` are the data. Drift and level shifts move both values of
  a block alike and cancel in the difference.
- **Alternating blocks** (capacity in isolation) run one variant at a time in short blocks, A B C, B C A, C A B, ...
  (every variant in every position equally often); each round gives one difference ``b - a``.

The mean difference gets a Student t interval over the blocks (widened by the lag-1 autocorrelation of the
differences when it is positive). Each pair gets one verdict, stated as b relative to a:

- ``equivalent``: the two one-sided tests (TOST) place the difference within +-margin of a's level;
- ``faster`` / ``slower``: the interval excludes 0 (and the difference is not within the margin);
- ``inconclusive``: neither (or fewer than ``MIN_BLOCKS`` blocks).

``alpha`` is shared by every comparison of a report (Bonferroni), so a report that makes m claims still has at most a
5% chance of calling any pair of identical variants faster or slower.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from loadtests.student_t import t_ppf

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

VERDICTS = ("faster", "slower", "equivalent", "inconclusive")
ERROR_VERDICTS = ("higher", "lower", "equivalent", "inconclusive")  # error rates: b's against a's
NOT_SATURATED = "not_saturated"  # throughput at a fixed rate every variant completed: no verdict to give
POWER = 0.8  # the minimum detectable effect of a verdict is the difference it finds with this probability
MIN_BLOCKS = 3  # fewer blocks give no verdict
MAX_BLOCKS = 60
TARGET_PER_BLOCK = 12  # interleaved runs: blocks are made this full (per variant) when the run allows it


# --- block-level data ---------------------------------------------------------------------------------------------


def grouped_quantile(values: FloatArray, groups: IntArray, n_groups: int, q: float) -> tuple[FloatArray, IntArray]:
    """The ``q`` quantile (linear interpolation, like numpy's default) of ``values`` per group code, and the counts;
    NaN for empty groups. Vectorised: one sort for all groups."""
    counts = np.bincount(groups, minlength=n_groups).astype(np.int64)
    order = np.lexsort((values, groups))
    ordered = values[order]
    starts = np.cumsum(counts) - counts
    position = (np.maximum(counts, 1) - 1) * q
    below = np.floor(position).astype(np.int64)
    fraction = position - below
    above = np.minimum(below + 1, np.maximum(counts, 1) - 1)
    result = np.full(n_groups, np.nan)
    filled = counts > 0
    lo = ordered[(starts + below)[filled]]
    hi = ordered[(starts + above)[filled]]
    result[filled] = lo + (hi - lo) * fraction[filled]
    return result, counts


def block_count(
    times: FloatArray,
    variant_codes: IntArray,
    n_variants: int,
    block_seconds: float | None = None,
    target_per_block: int = TARGET_PER_BLOCK,
    max_blocks: int = MAX_BLOCKS,
) -> int:
    """How many equal time blocks to cut an interleaved window into: ``block_seconds`` long if given, else as many as
    keep about ``target_per_block`` requests of the least-sent variant in each (at most ``max_blocks``)."""
    if len(times) == 0:
        return 0
    if block_seconds:
        span = float(times.max() - times.min())
        return max(1, round(span / block_seconds))
    fewest = int(np.bincount(variant_codes, minlength=n_variants).min())
    return max(1, min(max_blocks, fewest // target_per_block))


def balanced_block_order(variants: Sequence[str], rounds: int) -> list[str]:
    """Alternating blocks for capacity runs: round r runs the variants rotated by r (A B C, B C A, C A B, ...), so over
    a multiple of len(variants) rounds every variant sits in every position equally often and a linear drift
    favours none."""
    k = len(variants)
    return [variants[(r + position) % k] for r in range(rounds) for position in range(k)]


def randomized_block_order(variants: Sequence[str], rounds: int, seed: int) -> list[str]:
    """Alternating blocks in an order drawn at random for every round (seeded, so a run can be repeated). A fixed
    rotation can fall in step with a periodic disturbance (a cron job, a GC cycle) and hand it to one variant in every
    round; orders drawn independently per round turn any such disturbance into noise of random sign, which the
    interval over rounds then covers. (Latin squares, balanced exactly, tie the rounds of a square together and
    would not: the calibration shows it.) Every variant still has one block per round."""
    generator = np.random.default_rng(seed)
    return [variants[int(index)] for _ in range(rounds) for index in generator.permutation(len(variants))]


def default_rounds(n_variants: int, minimum: int = 3) -> int:
    """The smallest multiple of the number of variants that is at least ``minimum`` (balanced order)."""
    return max(n_variants, math.ceil(minimum / n_variants) * n_variants)


def round_values(
    order: Sequence[str], variants: Sequence[str], block_values: Sequence[float]
) -> FloatArray:  # (rounds, variants)
    """One value per executed block (in ``order``) -> a (rounds, variants) table; NaN for blocks not run."""
    k = len(variants)
    table = np.full((len(order) // k, k), np.nan)
    for index, (variant, value) in enumerate(zip(order, block_values, strict=True)):
        if index // k < table.shape[0]:
            table[index // k, variants.index(variant)] = value
    return table


# --- verdicts -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    verdict: str
    difference: float  # mean over blocks of (b - a)
    ci_low: float  # two-sided (1 - alpha) interval of the difference
    ci_high: float
    baseline: float  # a's level: mean over the same blocks
    margin: float  # absolute equivalence margin used (margin fraction x baseline)
    blocks: int
    error: float = math.nan  # standard error of the difference
    df: float = math.nan  # its degrees of freedom

    @property
    def relative(self) -> float:
        return self.difference / self.baseline if self.baseline else math.nan


def paired_verdict(
    a: FloatArray,
    b: FloatArray,
    margin: float = 0.05,
    alpha: float = 0.05,
    higher_is_better: bool = False,
    words: tuple[str, str] = ("faster", "slower"),
    absolute_margin: float | None = None,
    autocorrelation: bool = True,
) -> Verdict:
    """Verdict on b against a from one value per block each (same blocks, NaN = missing, dropped pairwise).

    ``words`` name the better and the worse outcome (error rates: lower, higher); ``absolute_margin`` replaces
    ``margin`` x a's level where that level may be 0 (error rates); ``autocorrelation`` off for values that are
    independent by design (runs of ``--repeats``)."""
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = len(a)
    baseline = float(np.mean(a)) if n else math.nan
    if absolute_margin is None:
        absolute_margin = margin * abs(baseline) if n else math.nan
    if n < 2:
        return Verdict("inconclusive", math.nan, math.nan, math.nan, baseline, absolute_margin, n)
    differences = b - a
    mean = float(np.mean(differences))
    spread = float(np.std(differences, ddof=1))
    rho = 0.0
    if autocorrelation and n >= 8 and spread > 0:
        centred = differences - mean
        rho = float(np.clip(np.sum(centred[1:] * centred[:-1]) / np.sum(centred * centred), 0.0, 0.9))
    effective = max(2.0, n * (1 - rho) / (1 + rho))
    error = spread / math.sqrt(effective)
    df = effective - 1
    half = t_ppf(1 - alpha / 2, df) * error
    low, high = mean - half, mean + half
    tost_half = t_ppf(1 - alpha, df) * error  # the (1 - 2 alpha) interval used by the two one-sided tests
    if n < MIN_BLOCKS:
        verdict = "inconclusive"
    elif -absolute_margin < mean - tost_half and mean + tost_half < absolute_margin:
        verdict = "equivalent"
    elif low > 0 or high < 0:
        worse = (mean > 0) != higher_is_better
        verdict = words[1] if worse else words[0]
    else:
        verdict = "inconclusive"
    return Verdict(verdict, mean, low, high, baseline, absolute_margin, n, error, df)


def detectable(verdict: Verdict, alpha: float, power: float = POWER) -> float:
    """The smallest true difference (absolute) that this design finds with probability ``power`` at ``alpha``: what a
    run could have found, so that "no difference seen" is read against it."""
    if not math.isfinite(verdict.error) or not math.isfinite(verdict.df):
        return math.nan
    return (t_ppf(1 - alpha / 2, verdict.df) + t_ppf(power, verdict.df)) * verdict.error


@dataclass(frozen=True)
class Comparison:
    """One verdict of a report: how ``b`` compares with ``a`` on ``metric`` at one load ``level``."""

    a: str
    b: str
    metric: str
    level: float
    verdict: str
    difference: float  # b - a, in the metric's unit
    ci_low: float
    ci_high: float
    relative: float  # difference / a's level
    baseline: float
    margin: float
    blocks: int
    confidence: float  # of [ci_low, ci_high], after the Bonferroni share
    design: str  # "interleaved time blocks" or "alternating blocks (rounds)"
    half_width_pct: float = math.nan  # half the interval's width, % of a's level: how precisely the run measured
    mde: float = math.nan  # minimum detectable effect (80% power at the verdict's alpha), in the metric's unit
    mde_pct: float = math.nan  # ... in % of a's level
    threshold_ms: float = math.nan  # tail verdicts: the latency whose exceedance is compared
    runs: int = 1  # --repeats: runs behind the verdict (then blocks counts runs too)
    within_variance: float = math.nan  # --repeats: mean squared standard error of a run's difference
    between_variance: float = math.nan  # --repeats: variance of the run-level differences
    note: str = ""  # why a verdict is what it is when the words alone do not say it
    standard_error: float = math.nan  # of the difference: what --plan scales to a target precision
    df: float = math.nan  # its degrees of freedom
    look: int = 1  # --until-decided: the look the verdict was made at (of ``looks`` planned)
    looks: int = 1


def comparison(
    a: str, b: str, metric: str, level: float, verdict: Verdict, alpha: float, design: str,
    threshold_ms: float = math.nan, note: str = "",
) -> Comparison:  # fmt: skip
    base = abs(verdict.baseline) if verdict.baseline and math.isfinite(verdict.baseline) else math.nan
    mde = detectable(verdict, alpha)
    return Comparison(
        a=a,
        b=b,
        metric=metric,
        level=level,
        verdict=verdict.verdict,
        difference=verdict.difference,
        ci_low=verdict.ci_low,
        ci_high=verdict.ci_high,
        relative=verdict.relative,
        baseline=verdict.baseline,
        margin=verdict.margin,
        blocks=verdict.blocks,
        confidence=1 - alpha,
        design=design,
        half_width_pct=(verdict.ci_high - verdict.ci_low) / 2 / base * 100,
        mde=mde,
        mde_pct=mde / base * 100,
        threshold_ms=threshold_ms,
        note=note,
        standard_error=verdict.error,
        df=verdict.df,
    )


INTERLEAVED = "interleaved time blocks"
ALTERNATING = "alternating blocks (rounds)"


def compare_rounds(
    names: Sequence[str],
    level: float,
    metric: str,
    table: FloatArray,
    margin: float = 0.05,
    alpha: float = 0.05,
    higher_is_better: bool = False,
) -> list[Comparison]:
    """Every pair on one metric from a (rounds, variants) table of alternating blocks: paired by round."""
    results = []
    for i, first in enumerate(names):
        for j in range(i + 1, len(names)):
            verdict = paired_verdict(table[:, i], table[:, j], margin, alpha, higher_is_better)
            results.append(comparison(first, names[j], metric, level, verdict, alpha, ALTERNATING))
    return results


def comparisons_in(n_variants: int, n_levels: int, n_metrics: int) -> int:
    """How many verdicts a report states: the Bonferroni divisor."""
    return max(1, n_variants * (n_variants - 1) // 2 * n_levels * n_metrics)
