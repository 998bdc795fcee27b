"""The comparison report: verdicts, tables, plots and a summary computed from the measurements (never hand-written)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app import markdown
from app.engine.catalogue import runtime_label
from loadtests.measurements import LevelResult, Samples
from loadtests.stats import ALTERNATING, Comparison

MAX_POINTS = 4000  # per variant and level in the latency-over-time scatter

METRIC_WORDS = {"p50_ms": "median latency", "pairs_per_s": "throughput (pairs/s)"}
UNITS = {"p50_ms": "ms", "pairs_per_s": "pairs/s"}


def unit_of(results: Sequence[LevelResult]) -> str:
    return "users" if results[0].mode == "users" else "requests/s offered"


def verdict_sentence(comparison: Comparison, unit: str = "users") -> str:
    c = comparison
    what = METRIC_WORDS.get(c.metric, c.metric)
    measure = UNITS.get(c.metric, "")
    interval = f"{c.confidence:.1%} CI {c.ci_low:+.2f} to {c.ci_high:+.2f} {measure}"
    if not math.isfinite(c.difference):
        return f"At {c.level:g} {unit}, {c.b} vs {c.a} ({what}): inconclusive, too few blocks ({c.blocks})."
    effect = f"{c.b} - {c.a} = {c.difference:+.2f} {measure} ({c.relative:+.1%}; {interval})"
    basis = f"{c.blocks} {'rounds' if c.design == ALTERNATING else 'time blocks'}"
    if c.verdict == "equivalent":
        return (
            f"At {c.level:g} {unit}, {c.b} and {c.a} are equivalent in {what}: {effect}, inside the equivalence margin "
            f"of +-{c.margin:.2f} {measure}; {basis}."
        )
    if c.verdict in ("faster", "slower"):
        return f"At {c.level:g} {unit}, {c.b} is {c.verdict} than {c.a} in {what}: {effect}; {basis}."
    return (
        f"At {c.level:g} {unit}, {c.b} vs {c.a} in {what} is inconclusive: {effect} neither excludes 0 nor fits "
        f"within +-{c.margin:.2f} {measure}; {basis} (measure longer for a verdict)."
    )


def verdict_lines(comparisons: Sequence[Comparison], unit: str = "users") -> list[str]:
    return [verdict_sentence(comparison, unit) for comparison in comparisons]


def _architecture(result: LevelResult) -> tuple[Any, ...]:
    metadata = result.metadata
    return (metadata.get("base_model"), runtime_label(metadata), metadata.get("device"), metadata.get("parameters"))


def summary(results: Sequence[LevelResult], comparisons: Sequence[Comparison]) -> list[str]:
    """Plain sentences, every number taken from the results."""
    lines = []
    unit = unit_of(results)
    top = max(result.offered for result in results)
    at_top = [result for result in results if result.offered == top]
    fastest = min(at_top, key=lambda result: result.p50_ms)
    slowest = max(at_top, key=lambda result: result.p50_ms)
    best = max(at_top, key=lambda result: result.pairs_per_s)
    lines.append(
        f"At the highest load ({top:g} {unit}), the lowest median latency is {fastest.variant} "
        f"({fastest.p50_ms:.1f} ms, p99 {fastest.p99_ms:.1f} ms) and the highest {slowest.variant} "
        f"({slowest.p50_ms:.1f} ms, p99 {slowest.p99_ms:.1f} ms); the highest throughput is {best.variant} "
        f"({best.pairs_per_s:.1f} pairs/s)."
    )
    if comparisons:
        counts = {word: sum(c.verdict == word for c in comparisons) for word in ("equivalent", "inconclusive")}
        differ = [c for c in comparisons if c.verdict in ("faster", "slower")]
        blocks = sorted({c.blocks for c in comparisons})
        basis = "rounds of alternating blocks" if comparisons[0].design == ALTERNATING else "interleaved time blocks"
        span = f"{blocks[0]}" if len(blocks) == 1 else f"{blocks[0]} to {blocks[-1]}"
        lines.append(
            f"{len(comparisons)} verdicts: {counts['equivalent']} equivalent (within +-{_margin_share(comparisons)} "
            f"of the first variant's level), {len(differ)} faster/slower, {counts['inconclusive']} inconclusive; each "
            f"rests on {span} {basis}, with {comparisons[0].confidence:.1%} intervals (the confidence asked for, "
            "shared by all verdicts of this report)."
        )
        architecture = {result.variant: _architecture(result) for result in results}
        same = [c for c in comparisons if architecture.get(c.a) == architecture.get(c.b)]
        if same and any(c.verdict in ("faster", "slower") for c in same):
            lines.append(
                f"{sum(c.verdict in ('faster', 'slower') for c in same)} of {len(same)} verdicts between variants of "
                "the same architecture, runtime and device say faster/slower: only the weights differ there, so look "
                "for a real cause (a fault delay, another dtype, a different tokenizer) before trusting it."
            )
        for comparison in sorted(differ, key=lambda c: -abs(c.relative))[:6]:
            lines.append(verdict_sentence(comparison, unit))
    errors = [result for result in results if result.failures]
    if errors:
        worst = max(errors, key=lambda result: result.error_rate)
        lines.append(
            f"Errors occurred for {len(errors)} variant/level(s); worst: {worst.variant} at {worst.offered:g} {unit} "
            f"({worst.error_rate:.1%})."
        )
    else:
        lines.append("No request failed in any run.")
    for result in at_top:
        if result.queue_share > 0.5:
            lines.append(
                f"{result.variant} spends {result.queue_share:.0%} of its in-service time queued at {top:g} {unit}: "
                "it is saturated there."
            )
    return lines


def _margin_share(comparisons: Sequence[Comparison]) -> str:
    shares = {round(c.margin / abs(c.baseline), 4) for c in comparisons if c.baseline and math.isfinite(c.margin)}
    return f"{shares.pop():.0%}" if len(shares) == 1 else "the margin"


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
            color = {"faster": "C2", "slower": "C3", "equivalent": "C0"}.get(c.verdict, "C7")
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


COLUMNS = (
    ("offered", "load", "{:g}"),
    ("requests", "requests", "{:d}"),
    ("share", "share", "{:.0%}"),
    ("requests_per_s", "req/s", "{:.1f}"),
    ("pairs_per_s", "pairs/s", "{:.1f}"),
    ("p50_ms", "p50 ms", "{:.1f}"),
    ("p90_ms", "p90 ms", "{:.1f}"),
    ("p95_ms", "p95 ms", "{:.1f}"),
    ("p99_ms", "p99 ms", "{:.1f}"),
    ("error_rate", "errors", "{:.2%}"),
    ("queue_ms", "queue ms", "{:.1f}"),
    ("inference_ms", "inference ms", "{:.1f}"),
    ("mean_batch_size", "mean batch", "{:.2f}"),
    ("queue_share", "queue share", "{:.0%}"),
    ("padding_ratio", "padding", "{:.0%}"),
)

VERDICT_HEADER = ["load", "a", "b", "metric", "b - a", "interval", "relative", "margin", "verdict", "blocks"]


def _tables(results: Sequence[LevelResult]) -> list[tuple[str, str, list[list[str]]]]:
    tables = []
    for variant in dict.fromkeys(result.variant for result in results):
        rows = sorted((r for r in results if r.variant == variant), key=lambda r: r.offered)
        meta = rows[0].metadata
        caption = (
            f"intermediate task: {meta.get('intermediate_task')}, base model: {meta.get('base_model')}, "
            f"runs as: {runtime_label(meta)}, device: {meta.get('device')}, parameters: {meta.get('parameters')}"
            + (", UNTRAINED demo weights" if meta.get("untrained") else "")
        )
        body = [[fmt.format(getattr(row, key)) for key, _, fmt in COLUMNS] for row in rows]
        tables.append((variant, caption, body))
    return tables


def _verdict_rows(comparisons: Sequence[Comparison]) -> list[list[str]]:
    return [
        [
            f"{c.level:g}",
            c.a,
            c.b,
            c.metric,
            f"{c.difference:+.2f}",
            f"{c.ci_low:+.2f} .. {c.ci_high:+.2f}",
            f"{c.relative:+.1%}",
            f"+-{c.margin:.2f}",
            f"**{c.verdict}**",
            str(c.blocks),
        ]
        for c in comparisons
    ]


def _design(results: Sequence[LevelResult], comparisons: Sequence[Comparison]) -> str:
    if results[0].design == "capacity":
        return (
            "capacity: each variant alone, in short alternating blocks with every variant in every position equally "
            "often; throughput and median latency compared within rounds (the first part of each block discarded)"
        )
    return (
        "interleaved: all variants in one time window per level, each user cycling its own seeded shuffle of "
        "them; the window cut into time blocks, one median per variant per block, verdicts from the paired block "
        "differences"
    )


def write_report(
    results: Sequence[LevelResult],
    comparisons: Sequence[Comparison],
    samples: dict[float, Samples],
    folder: Path,
    parameters: dict[str, Any],
) -> None:
    sentences = summary(results, comparisons)
    images = plots(results, comparisons, samples, folder)
    tables = _tables(results)
    mode = "closed loop, users" if results[0].mode == "users" else "fixed arrival rate, requests/s"
    shown: tuple[str, ...] = (
        "duration",
        "warmup",
        "block_seconds",
        "rounds",
        "margin",
        "confidence",
        "seed",
        "pairs_per_request",
        "xnli_dir",
        "languages",
    )
    settings = ", ".join(f"{key}={parameters[key]}" for key in shown if parameters.get(key) not in (None, ""))
    header = [column for _, column, _ in COLUMNS]
    design = _design(results, comparisons)
    confidence = comparisons[0].confidence if comparisons else 0.95
    reading = (
        "Each verdict says how b compares with a. equivalent: the two one-sided tests put b - a inside the margin "
        "(a difference may exist but is smaller than the margin); faster / slower: the interval excludes 0; "
        "inconclusive: neither, measure longer. Intervals are Student t intervals over blocks (never resampled single "
        f"requests, whose latencies are correlated in time), each at {confidence:.1%} so that all verdicts of this "
        "report hold together at the confidence asked for (Bonferroni)."
    )

    lines = ["# xnli-serve variant comparison", "", f"Design: {design}.", "", f"Load: {mode}; {settings}.", ""]
    lines += ["## Summary", "", *[f"- {sentence}" for sentence in sentences], ""]
    lines += ["## Verdicts", "", reading, ""]
    lines += markdown.table(VERDICT_HEADER, _verdict_rows(comparisons))
    lines += ["", "## Results per variant", ""]
    for variant, caption, body in tables:
        lines += [f"### {variant}", "", caption, "", *markdown.table(header, body)]
        lines.append("")
    lines += [
        "Latencies are measured by the Locust clients; `queue ms` and `inference ms` are the service's own split "
        "(X-Queue-Time, X-Inference-Time); `mean batch`, `queue share` (queue time / in-service time) and `padding` "
        "come from the service's Prometheus histograms over the same run.",
        "",
        "## Plots",
        "",
        *[f"![{name}]({name})" for name in images],
    ]
    (folder / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def table(head: list[str], rows: list[list[str]]) -> list[str]:
        out = ["<table><tr>", *[f"<th>{html.escape(cell)}</th>" for cell in head], "</tr>"]
        out += ["<tr>" + "".join(f"<td>{html.escape(cell.strip('*'))}</td>" for cell in row) + "</tr>" for row in rows]
        return [*out, "</table>"]

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>xnli-serve variant comparison</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style></head><body>",
        "<h1>xnli-serve variant comparison</h1>",
        f"<p>Design: {html.escape(design)}.</p><p>Load: {html.escape(mode)}; {html.escape(settings)}.</p>",
        "<h2>Summary</h2><ul>",
        *[f"<li>{html.escape(sentence)}</li>" for sentence in sentences],
        f"</ul><h2>Verdicts</h2><p>{html.escape(reading)}</p>",
        *table(VERDICT_HEADER, _verdict_rows(comparisons)),
        "<h2>Results per variant</h2>",
    ]
    for variant, caption, body in tables:
        parts.append(f"<h3>{html.escape(variant)}</h3><p>{html.escape(caption)}</p>")
        parts += table(header, body)
    parts += [f"<h2>{html.escape(name)}</h2><img src='{name}'>" for name in images]
    parts.append("</body></html>")
    (folder / "report.html").write_text("\n".join(parts), encoding="utf-8")
