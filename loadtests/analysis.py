"""Every verdict of a comparison from block-level data: median, tails (p95, p99), error rate and throughput.

The unit of the analysis is a *block*: an interleaved run's time block (all variants in it), or a capacity run's
round (each variant's own block of that round). Each unit gives one value per variant, and each pair gets a verdict
from the paired per-unit differences (``stats.paired_verdict``). What the values are:

- **Median** (``p50_ms``): per unit, each variant's median over the *same number* of requests (the larger side is
  subsampled at random to the smaller's count). Medians of equal counts have the same sampling distribution for two
  identical variants, so unequal counts per block (one variant slower, a 1:3 split) no longer bias the difference.
  A unit where one variant sent nothing has nothing to compare and is left out; a unit where it completed little
  counts with what it has: failures are in it, censored at the client's timeout.
- **Tails** (``p95_tail``, ``p99_tail``): in each unit, the pooled q-quantile of the pair's requests fixes a
  threshold (a symmetric function of both variants' data, so it favours neither, and local to the unit, so drift
  between units does not move it); each variant's value is its share of the unit's requests above it, failures
  included (censored at the timeout, they exceed every threshold). A tail regression raises b's share; for identical
  variants the requests of a unit are exchangeable, so the shares are equal in expectation however the counts fall.
  Equivalence: within +-``tail_margin`` x (1 - q) (e.g. p99: b's share above the threshold within 0.5% to 1.5%).
  The reported ``threshold_ms`` is the median of the units' thresholds.
- **Error rate** (``error_rate``): each unit's share of requests that were refused, failed or timed out; verdicts
  ``higher`` / ``lower`` / ``equivalent`` (within +-``error_margin``, an absolute share) / ``inconclusive``.
- **Throughput** (``pairs_per_s``, capacity runs): completions per measured second, zero included.

A variant that fails more is not faster: when a pair's error-rate verdict says one side fails more, a latency
verdict that would call that side faster (its answered requests may well be quicker: a failed batch frees the
device) is withheld (``inconclusive``, with the reason in its note). Withholding claims can only lower the false
rate, and the difference and interval stay as measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from loadtests import stats
from loadtests.stats import Comparison, FloatArray, IntArray

BoolArray = npt.NDArray[np.bool_]

TAIL_QUANTILES = {"p95_tail": 0.95, "p99_tail": 0.99}
LATENCY_METRICS = ("p50_ms", "p95_tail", "p99_tail")
METRICS = (*LATENCY_METRICS, "error_rate")
DEFAULT_TAIL_MARGIN = 0.5  # share of the nominal tail (1 - q)
DEFAULT_ERROR_MARGIN = 0.005  # absolute share of requests


def time_blocks(
    times: FloatArray, variant_codes: IntArray, n_variants: int, block_seconds: float | None = None
) -> tuple[IntArray, int]:
    """Each request's interleaved time block (equal blocks over the window) and the number of blocks."""
    n_blocks = stats.block_count(times, variant_codes, n_variants, block_seconds)
    if n_blocks == 0:
        return np.zeros(0, dtype=np.int64), 0
    start, end = float(times.min()), float(times.max())
    width = (end - start) / n_blocks if end > start else 1.0
    return np.minimum(((times - start) / width).astype(np.int64), n_blocks - 1), n_blocks


def equal_count_quantiles(
    units: IntArray,
    sides: IntArray,
    values: FloatArray,
    n_units: int,
    q: float,
    generator: np.random.Generator,
) -> tuple[FloatArray, FloatArray]:
    """Per unit, the ``q`` quantile of side 0's and side 1's values over the same number of requests (the larger side
    subsampled at random); NaN for both where either side has none."""
    group = units * 2 + sides
    counts = np.bincount(group, minlength=2 * n_units)[: 2 * n_units]
    fewest = counts.reshape(n_units, 2).min(axis=1)
    order = np.lexsort((generator.random(len(group)), group))
    ordered = group[order]
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(order)) - starts[ordered]
    kept = order[rank < fewest[ordered // 2]]
    quantiles, _ = stats.grouped_quantile(values[kept], group[kept], 2 * n_units, q)
    table = quantiles.reshape(n_units, 2)
    return table[:, 0], table[:, 1]


def unit_shares(units: IntArray, sides: IntArray, flags: BoolArray, n_units: int) -> tuple[FloatArray, FloatArray]:
    """Per unit, side 0's and side 1's share of requests with ``flags`` set (NaN where a side sent none)."""
    group = units * 2 + sides
    counts = np.bincount(group, minlength=2 * n_units)[: 2 * n_units].astype(np.float64)
    hits = np.bincount(group, weights=flags.astype(np.float64), minlength=2 * n_units)[: 2 * n_units]
    with np.errstate(invalid="ignore", divide="ignore"):
        table = (hits / counts).reshape(n_units, 2)
    return table[:, 0], table[:, 1]


def pair_values(
    metric: str,
    units: IntArray,
    sides: IntArray,
    latency_ms: FloatArray,
    failed: BoolArray,
    n_units: int,
    generator: np.random.Generator,
) -> tuple[FloatArray, FloatArray, float]:
    """One value per unit for each side of a pair on ``metric`` (and the tail threshold, NaN for other metrics)."""
    if metric == "p50_ms":
        a, b = equal_count_quantiles(units, sides, latency_ms, n_units, 0.5, generator)
        return a, b, float("nan")
    if metric == "error_rate":
        a, b = unit_shares(units, sides, failed, n_units)
        return a, b, float("nan")
    thresholds, _ = stats.grouped_quantile(latency_ms, units, n_units, TAIL_QUANTILES[metric])
    a, b = unit_shares(units, sides, (latency_ms > thresholds[units]) | failed, n_units)
    return a, b, float(np.nanmedian(thresholds)) if np.isfinite(thresholds).any() else float("nan")


def compare_pairs(
    names: Sequence[str],
    level: float,
    units: IntArray,
    variant_codes: IntArray,
    latency_ms: FloatArray,
    failed: BoolArray,
    n_units: int,
    design: str,
    margin: float = 0.05,
    alpha: float = 0.05,
    metrics: Sequence[str] = METRICS,
    tail_margin: float = DEFAULT_TAIL_MARGIN,
    error_margin: float = DEFAULT_ERROR_MARGIN,
    seed: int = 0,
) -> list[Comparison]:
    """Every pair (a before b in ``names``) on every metric, from requests already assigned to units.

    ``latency_ms`` must already be censored (``outcomes.censored``) where ``failed``."""
    generator = np.random.default_rng(seed)
    results = []
    for i, first in enumerate(names):
        for j in range(i + 1, len(names)):
            chosen = (variant_codes == i) | (variant_codes == j)
            sides = (variant_codes[chosen] == j).astype(np.int64)
            mine = units[chosen], sides, latency_ms[chosen], failed[chosen]
            for metric in metrics:
                a, b, threshold = pair_values(metric, *mine, n_units, generator)
                if metric == "error_rate":
                    verdict = stats.paired_verdict(
                        a, b, alpha=alpha, words=("lower", "higher"), absolute_margin=error_margin
                    )
                elif metric in TAIL_QUANTILES:
                    nominal = 1 - TAIL_QUANTILES[metric]
                    verdict = stats.paired_verdict(a, b, alpha=alpha, absolute_margin=tail_margin * nominal)
                else:
                    verdict = stats.paired_verdict(a, b, margin, alpha)
                results.append(
                    stats.comparison(first, names[j], metric, level, verdict, alpha, design, threshold_ms=threshold)
                )
    return failures_are_not_speed(results)


FAILS_MORE = "not called faster: it fails more (error rate higher)"


def failures_are_not_speed(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """Withhold every latency verdict that calls the side with the higher error rate faster (see the module)."""
    higher = {
        (c.level, c.a, c.b): c.b if c.verdict == "higher" else c.a
        for c in comparisons
        if c.metric == "error_rate" and c.verdict in ("higher", "lower")
    }
    result = []
    for c in comparisons:
        worse = higher.get((c.level, c.a, c.b))
        faster = c.b if c.verdict == "faster" else c.a if c.verdict == "slower" else None
        if c.metric in LATENCY_METRICS and worse is not None and faster == worse:
            c = replace(c, verdict="inconclusive", note="; ".join(x for x in (c.note, f"{worse} {FAILS_MORE}") if x))
        result.append(c)
    return result


def compare_throughput(
    names: Sequence[str],
    level: float,
    table: FloatArray,
    margin: float,
    alpha: float,
    saturated: bool = True,
) -> list[Comparison]:
    """Throughput per round (completions per measured second, zero included) for every pair; ``not_saturated``
    instead of a verdict when every variant completed the offered rate (nothing to tell them apart)."""
    found = stats.compare_rounds(names, level, "pairs_per_s", table, margin, alpha, higher_is_better=True)
    if saturated:
        return found
    note = "every variant completed the offered rate: raise the rate (or use users) for a throughput verdict"
    return [replace(c, verdict=stats.NOT_SATURATED, note=note) for c in found]  # same numbers, no claim


def compare_interleaved(
    names: Sequence[str],
    level: float,
    times: FloatArray,
    variant_codes: IntArray,
    latency_ms: FloatArray,
    margin: float = 0.05,
    alpha: float = 0.05,
    block_seconds: float | None = None,
    failed: BoolArray | None = None,
    metrics: Sequence[str] = ("p50_ms",),
    tail_margin: float = DEFAULT_TAIL_MARGIN,
    error_margin: float = DEFAULT_ERROR_MARGIN,
    seed: int = 0,
) -> list[Comparison]:
    """Every pair on ``metrics`` from one interleaved window, cut into equal time blocks."""
    units, n_units = time_blocks(times, variant_codes, len(names), block_seconds)
    failed = np.zeros(len(times), dtype=np.bool_) if failed is None else failed
    return compare_pairs(
        names, level, units, variant_codes, latency_ms, failed, n_units, stats.INTERLEAVED, margin, alpha, metrics,
        tail_margin, error_margin, seed,
    )  # fmt: skip
