"""The comparison report's figures: latency distributions and latency over time per level, percentiles and
throughput against load, where the time goes, and every verdict with its interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from loadtests.measurements import LevelResult, Samples, unit_of
from loadtests.stats import Comparison

MAX_POINTS = 4000  # per variant and level in the latency-over-time scatter


def plots(
    results: Sequence[LevelResult], comparisons: Sequence[Comparison], samples: dict[float, Samples], folder: Path
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(result.variant for result in results))
    levels = sorted(samples)
    unit = unit_of(results)
    colors = {variant: f"C{index}" for index, variant in enumerate(variants)}
    names = []

    # Latency distribution per variant, one panel per level.
    columns = min(3, len(levels))
    rows = math.ceil(len(levels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False)
    for axis, level in zip(axes.flat, levels, strict=False):
        run = samples[level].measured()
        for index, variant in enumerate(run.variants):
            latencies = np.sort(run.latency_ms[(run.variant == index) & run.ok])
            if len(latencies):
                axis.step(
                    latencies,
                    np.arange(1, len(latencies) + 1) / len(latencies),
                    where="post",
                    color=colors.get(variant),
                    label=f"{variant} (n={len(latencies)})",
                )
        axis.set(xscale="log", xlabel="latency (ms, log)", ylabel="share of requests <= x", title=f"{level:g} {unit}")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(levels) :]:
        axis.set_visible(False)
    figure.suptitle("Latency distribution (ECDF) per variant")
    figure.tight_layout()
    figure.savefig(folder / "latency_ecdf.png", dpi=110)
    plt.close(figure)
    names.append("latency_ecdf.png")

    # Latency over time: drift becomes visible, and shows it fell on every variant alike.
    figure, axes = plt.subplots(len(levels), 1, figsize=(10, 3.2 * len(levels)), squeeze=False)
    generator = np.random.default_rng(0)
    for axis, level in zip(axes[:, 0], levels, strict=True):
        run = samples[level]
        origin = float(run.start.min()) if len(run.start) else 0.0
        edges = np.linspace(origin, float(run.start.max()) if len(run.start) else 1.0, 41)
        for index, variant in enumerate(run.variants):
            mine = (run.variant == index) & run.ok
            x, y = run.start[mine] - origin, run.latency_ms[mine]
            shown = generator.choice(len(x), min(len(x), MAX_POINTS), replace=False)
            axis.scatter(x[shown], y[shown], s=3, alpha=0.25, color=colors.get(variant))
            bins = np.digitize(run.start[mine], edges[1:-1])
            middles = (edges[:-1] + edges[1:]) / 2 - origin
            # NaN where a variant had (almost) no requests, e.g. another variant's capacity block: the line breaks
            medians = [float(np.median(y[bins == b])) if np.sum(bins == b) >= 3 else np.nan for b in range(40)]
            axis.plot(middles, medians, "-", color=colors.get(variant), lw=1.8, label=f"{variant} median (moving)")
        if run.block_order and run.schedule_start is not None:
            for block in range(len(run.block_order) + 1):
                axis.axvline(run.schedule_start - origin + block * run.block_seconds, color="#999", lw=0.5)
        axis.set(yscale="log", xlabel="seconds into the run", ylabel="latency (ms, log)", title=f"{level:g} {unit}")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(folder / "latency_over_time.png", dpi=110)
    plt.close(figure)
    names.append("latency_over_time.png")

    # Percentiles and throughput: against load when there are several levels, as bars when there is one.
    for file_name, keys, ylabel, title in (
        ("latency.png", ("p50_ms", "p90_ms", "p99_ms"), "latency (ms)", "Latency percentiles"),
        ("throughput.png", ("pairs_per_s",), "achieved pairs/s", "Throughput"),
    ):
        figure, axis = plt.subplots(figsize=(8, 4.5))
        if len(levels) > 1:
            styles = ("-o", "--s", ":^")
            for variant in variants:
                mine = sorted((r for r in results if r.variant == variant), key=lambda r: r.offered)
                for key, style in zip(keys, styles, strict=False):
                    axis.plot(
                        [r.offered for r in mine],
                        [getattr(r, key) for r in mine],
                        style,
                        color=colors[variant],
                        label=f"{variant} {key.removesuffix('_ms')}",
                    )
            axis.set(xlabel=unit, title=f"{title} vs offered load")
        else:
            width = 0.8 / len(keys)
            positions = np.arange(len(variants))
            for number, key in enumerate(keys):
                values = [getattr(next(r for r in results if r.variant == v), key) for v in variants]
                axis.bar(
                    positions + number * width,
                    values,
                    width,
                    label=key.removesuffix("_ms"),
                    color=[colors[v] for v in variants],
                    alpha=1.0 - 0.3 * number,
                    edgecolor="black",
                )
            axis.set_xticks(positions + width * (len(keys) - 1) / 2, variants, rotation=15, fontsize=8)
            axis.set(title=f"{title} at {levels[0]:g} {unit}")
        axis.set(ylabel=ylabel)
        axis.grid(alpha=0.3, axis="y")
        axis.legend(fontsize=7, ncol=2)
        figure.tight_layout()
        figure.savefig(folder / file_name, dpi=110)
        plt.close(figure)
        names.append(file_name)

    top = max(result.offered for result in results)
    at_top = [next(r for r in results if r.variant == variant and r.offered == top) for variant in variants]
    figure, axis = plt.subplots(figsize=(8, 4.5))
    positions = np.arange(len(at_top))
    queue = np.array([r.queue_ms for r in at_top])
    inference = np.array([r.inference_ms for r in at_top])
    other = np.array([r.other_ms for r in at_top])
    axis.bar(positions, queue, label="queue", color="#e4572e")
    axis.bar(positions, inference, bottom=queue, label="inference", color="#17bebb")
    axis.bar(positions, other, bottom=queue + inference, label="other (HTTP, tokenization, client)", color="#a5a5a5")
    axis.set_xticks(positions, [r.variant for r in at_top], rotation=15, fontsize=8)
    axis.set(ylabel="mean ms per request", title=f"Where the time goes at {top:g} {unit}")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(folder / "breakdown.png", dpi=110)
    plt.close(figure)
    names.append("breakdown.png")

    if comparisons:  # every verdict: relative difference, its interval and the equivalence band
        figure, axis = plt.subplots(figsize=(8, 0.45 * len(comparisons) + 1.6))
        for row, c in enumerate(comparisons):
            base = abs(c.baseline) if c.baseline else math.nan
            color = {"faster": "C2", "lower": "C2", "slower": "C3", "higher": "C3", "equivalent": "C0"}.get(
                c.verdict, "C7"
            )
            axis.errorbar(
                c.difference / base * 100,
                row,
                xerr=[[(c.difference - c.ci_low) / base * 100], [(c.ci_high - c.difference) / base * 100]],
                fmt="o",
                color=color,
                capsize=3,
            )
            margin = c.margin / base * 100
            axis.plot([-margin, margin], [row, row], color="C0", alpha=0.15, lw=10, solid_capstyle="butt")
        labels = [f"{c.b} vs {c.a}, {c.metric}, {c.level:g}: {c.verdict}" for c in comparisons]
        axis.set_yticks(range(len(comparisons)), labels, fontsize=7)
        axis.axvline(0, color="black", lw=0.8)
        axis.set(xlabel="b - a, % of a (band: equivalence margin)", title="Verdicts")
        axis.invert_yaxis()
        axis.grid(alpha=0.3, axis="x")
        figure.tight_layout()
        figure.savefig(folder / "verdicts.png", dpi=110)
        plt.close(figure)
        names.append("verdicts.png")
    return names
