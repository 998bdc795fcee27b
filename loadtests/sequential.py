"""Run until decided (``--until-decided --max-duration S``): look at the data after every chunk of a level and stop
once every verdict is decided, with a false rate that stays at alpha however many looks were taken.

Looking again and again at a growing run and stopping at the first "faster" is a classic way to find differences
that are not there: with 8 looks at a nominal 5%, identical variants come out different in about 15-20% of runs.
Here each look k of K gets only a share of alpha, by a Lan-DeMets spending function of the information fraction
t_k = k / K (time measured so far over the most allowed):

- ``obrien-fleming`` (default): alpha(t) = 4 - 4 Phi(z_{1-alpha/4} / sqrt(t)); early looks spend almost nothing, so a
  run that goes the whole way loses almost no power against the fixed-duration run;
- ``pocock``: alpha(t) = alpha ln(1 + (e - 1) t); stops earlier when the difference is large.

The nominal level of each look is the exact group-sequential boundary for a statistic that behaves like a Brownian
motion in t (a mean over blocks that grows with the run): computed by numerical integration over a grid (Armitage,
McPherson and Rowe's recursion), so that the probability of crossing at look k, having not crossed before, is the
spent increment alpha(t_k) - alpha(t_{k-1}). Each verdict then uses that nominal level for its t interval and its
equivalence test. The stopping rule (every verdict decided) cannot raise the false rate: it only chooses which look
is reported, and crossing at any look is what the boundaries bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import lru_cache
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from loadtests.analysis import FAILS_MORE
from loadtests.stats import Comparison

SPENDING = ("obrien-fleming", "pocock")
MIN_NOMINAL = 1e-9  # looks that may spend nothing still get a (negligible) level, so a t quantile exists
_NORMAL = NormalDist()
_erf = np.frompyfunc(math.erf, 1, 1)


def _cdf(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    values = np.asarray(_erf(x / math.sqrt(2.0)), dtype=np.float64)
    result: npt.NDArray[np.float64] = 0.5 * (1.0 + values)
    return result


def spent(fraction: float, alpha: float, kind: str = "obrien-fleming") -> float:
    """Alpha spent by information fraction ``fraction`` (0..1): alpha(0) = 0, alpha(1) = alpha."""
    if fraction <= 0:
        return 0.0
    fraction = min(1.0, fraction)
    if kind == "obrien-fleming":
        z = _NORMAL.inv_cdf(1 - alpha / 4)  # two-sided, symmetric: alpha / 2 per side
        return 4.0 * (1.0 - _NORMAL.cdf(z / math.sqrt(fraction)))
    if kind == "pocock":
        return alpha * math.log(1.0 + (math.e - 1.0) * fraction)
    raise ValueError(f"unknown spending function {kind!r}: one of {SPENDING}")


def fractions_for(looks: int) -> list[float]:
    """Equal chunks: look k of K at t = k / K."""
    return [(k + 1) / looks for k in range(looks)]


def nominal_alphas(fractions: Sequence[float], alpha: float, kind: str = "obrien-fleming") -> list[float]:
    """Two-sided nominal level of each look (cached: the same design is asked for at every level and run)."""
    return list(_nominal_alphas(tuple(fractions), alpha, kind))


@lru_cache(maxsize=256)
def _nominal_alphas(fractions: tuple[float, ...], alpha: float, kind: str) -> tuple[float, ...]:
    """Two-sided nominal level of each look, such that P(first crossing at look k | no difference) is the alpha
    spent between t_{k-1} and t_k (so P(any crossing) = alpha). Exact up to the grid, for a Brownian-motion
    statistic observed at ``fractions``."""
    increments = np.diff([0.0, *(spent(t, alpha, kind) for t in fractions)])
    step = 0.01
    grid = np.arange(-9.0, 9.0 + step / 2, step)
    weights = np.full(len(grid), step)
    weights[[0, -1]] = step / 2
    density: npt.NDArray[np.float64] | None = None  # of S_k = B(t_k) on the grid, on not having crossed yet
    previous = 0.0
    nominal: list[float] = []
    for t, target in zip(fractions, increments, strict=True):
        delta = t - previous
        sd = math.sqrt(delta)
        mass = None if density is None else weights * density

        def crossing(c: float, t: float = t, mass: npt.NDArray[np.float64] | None = mass, sd: float = sd) -> float:
            """P(first crossing at this look) for the boundary c (z scale)."""
            if mass is None:
                return 2.0 * (1.0 - _NORMAL.cdf(c))
            bound = c * math.sqrt(t)
            out = _cdf((-bound - grid) / sd) + 1.0 - _cdf((bound - grid) / sd)
            return float(np.sum(mass * out))

        if target <= 0:
            c = math.inf
        else:
            low, high = 0.0, 40.0
            for _ in range(60):  # crossing(c) falls as c grows
                middle = (low + high) / 2
                low, high = (middle, high) if crossing(middle) > target else (low, middle)
            c = (low + high) / 2
        nominal.append(max(MIN_NOMINAL, 2.0 * (1.0 - _NORMAL.cdf(c))) if math.isfinite(c) else MIN_NOMINAL)
        inside = np.abs(grid) < c * math.sqrt(t)
        if density is None:
            fresh = np.exp(-0.5 * grid**2 / t) / math.sqrt(2 * math.pi * t)
        else:
            kernel = np.exp(-0.5 * ((grid[:, None] - grid[None, :]) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
            fresh = kernel @ (weights * density)
        density = np.where(inside, fresh, 0.0)
        previous = t
    return tuple(nominal)


def decided(comparisons: Sequence[Comparison]) -> bool:
    """Every verdict says something (``not_saturated`` is a statement too, and so is a latency verdict withheld
    because the side it would call faster fails more): nothing is left open."""
    return all(c.verdict != "inconclusive" or FAILS_MORE in c.note for c in comparisons)


def until_decided(
    analyse: Callable[[int, float], list[Comparison]],
    looks: int,
    alpha: float,
    kind: str = "obrien-fleming",
) -> list[Comparison]:
    """Call ``analyse(look, nominal alpha)`` for look 1, 2, ... (it measures the next chunk and analyses all data
    so far) until every verdict is decided or the last look; the verdicts of that look, each marked with it."""
    levels = nominal_alphas(fractions_for(looks), alpha, kind)
    found: list[Comparison] = []
    for look in range(1, looks + 1):
        found = analyse(look, levels[look - 1])
        if decided(found) or look == looks:
            break
    note = f"stopped at look {look} of {looks} ({kind} alpha spending)"
    return [replace(c, look=look, looks=looks, note="; ".join(x for x in (c.note, note) if x)) for c in found]
