"""What a comparison writes: its data (results.json, results.csv, comparisons.csv) and its report (verdicts, tables,
plots and a summary computed from the measurements, never hand-written)."""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from app import markdown
from app.engine.models.catalogue import runtime_label
from loadtests.analysis import FAILS_MORE
from loadtests.measurements import LevelResult, Samples, unit_of
from loadtests.plots import plots
from loadtests.stats import ALTERNATING, Comparison

METRIC_WORDS = {
    "p50_ms": "median latency",
    "pairs_per_s": "throughput (pairs/s)",
    "p95_tail": "p95 tail (share of requests above the pair's pooled p95)",
    "p99_tail": "p99 tail (share of requests above the pair's pooled p99)",
    "error_rate": "error rate (refused, failed or timed out)",
    "capacity": "capacity at the SLO (pairs/s)",
}
UNITS = {"p50_ms": "ms", "pairs_per_s": "pairs/s", "capacity": "pairs/s"}
SHARE_METRICS = ("p95_tail", "p99_tail", "error_rate")  # differences are shares of requests: shown in points
DIFFERENT = ("faster", "slower", "higher", "lower")  # the words that claim a difference


def _amount(value: float, metric: str) -> str:
    return f"{value * 100:+.2f} pts" if metric in SHARE_METRICS else f"{value:+.2f} {UNITS.get(metric, '')}".rstrip()


def _cell(value: float, metric: str) -> str:
    return f"{value * 100:+.2f} pts" if metric in SHARE_METRICS else f"{value:+.2f}"


def _percent(value: float) -> str:
    return f"{value:.1f}%" if math.isfinite(value) else "-"


def _precision(c: Comparison) -> str:
    """What the run could have found: its interval's half-width and minimum detectable effect, % of a's level."""
    if not math.isfinite(c.half_width_pct):
        return ""
    mde = f", detectable effect {c.mde_pct:.1f}%" if math.isfinite(c.mde_pct) else ""
    return f" (half-width {c.half_width_pct:.1f}% of a{mde})"


def verdict_sentence(comparison: Comparison, unit: str = "users") -> str:
    c = comparison
    what = METRIC_WORDS.get(c.metric, c.metric)
    scale, measure = (100.0, "pts") if c.metric in SHARE_METRICS else (1.0, UNITS.get(c.metric, ""))
    interval = f"{c.confidence:.1%} CI {c.ci_low * scale:+.2f} to {c.ci_high * scale:+.2f} {measure}".rstrip()
    if not math.isfinite(c.difference):
        return f"At {c.level:g} {unit}, {c.b} vs {c.a} ({what}): inconclusive, too few blocks ({c.blocks})."
    relative = f"{c.relative:+.1%}; " if math.isfinite(c.relative) else ""
    effect = f"{c.b} - {c.a} = {_amount(c.difference, c.metric)} ({relative}{interval})"
    units = "rounds" if c.design == ALTERNATING else "time blocks"
    basis = f"{c.runs} runs" if c.runs > 1 else f"{c.blocks} {units}"
    basis += _precision(c)
    if c.metric in ("p95_tail", "p99_tail") and math.isfinite(c.threshold_ms):
        basis += f"; threshold {c.threshold_ms:.1f} ms"
    margin = _amount(c.margin, c.metric).lstrip("+")
    if c.verdict == "equivalent":
        return (
            f"At {c.level:g} {unit}, {c.b} and {c.a} are equivalent in {what}: {effect}, inside the equivalence margin "
            f"of +-{margin}; {basis}."
        )
    if c.verdict == "not_saturated":
        return f"At {c.level:g} {unit}, {c.b} vs {c.a} in {what}: not saturated, {c.note}; {basis}."
    if c.verdict in DIFFERENT:
        return f"At {c.level:g} {unit}, {c.b} is {c.verdict} than {c.a} in {what}: {effect}; {basis}."
    if FAILS_MORE in c.note:
        return f"At {c.level:g} {unit}, {c.b} vs {c.a} in {what}: {effect}, but {c.note.split('; ')[-1]}; {basis}."
    return (
        f"At {c.level:g} {unit}, {c.b} vs {c.a} in {what} is inconclusive: {effect} neither excludes 0 nor fits "
        f"within +-{margin}; {basis} (measure longer for a verdict)."
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
        differ = [c for c in comparisons if c.verdict in DIFFERENT]
        blocks = sorted({c.blocks for c in comparisons})
        basis = "rounds of alternating blocks" if comparisons[0].design == ALTERNATING else "interleaved time blocks"
        span = f"{blocks[0]}" if len(blocks) == 1 else f"{blocks[0]} to {blocks[-1]}"
        lines.append(
            f"{len(comparisons)} verdicts: {counts['equivalent']} equivalent (within +-{_margin_share(comparisons)} "
            f"of the first variant's level), {len(differ)} faster/slower/higher/lower, {counts['inconclusive']} "
            "inconclusive; each "
            f"rests on {span} {basis}, with {comparisons[0].confidence:.1%} intervals (the confidence asked for, "
            "shared by all verdicts of this report)."
        )
        architecture = {result.variant: _architecture(result) for result in results}
        same = [c for c in comparisons if architecture.get(c.a) == architecture.get(c.b)]
        if same and any(c.verdict in DIFFERENT for c in same):
            lines.append(
                f"{sum(c.verdict in DIFFERENT for c in same)} of {len(same)} verdicts between variants of "
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

VERDICT_HEADER = [
    "load", "a", "b", "metric", "b - a", "interval", "relative", "margin", "verdict", "blocks", "half-width", "MDE",
]  # fmt: skip


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


def verdict_rows(comparisons: Sequence[Comparison]) -> list[list[str]]:
    return [
        [
            f"{c.level:g}",
            c.a,
            c.b,
            c.metric,
            _cell(c.difference, c.metric),
            f"{_cell(c.ci_low, c.metric)} .. {_cell(c.ci_high, c.metric)}",
            f"{c.relative:+.1%}",
            f"+-{_cell(c.margin, c.metric).lstrip('+')}",
            f"**{c.verdict}**",
            f"{c.blocks}" + (f" ({c.runs} runs)" if c.runs > 1 else ""),
            _percent(c.half_width_pct),
            _percent(c.mde_pct),
        ]
        for c in comparisons
    ]


REPLICATION_HEADER = ["load", "a", "b", "metric", "runs", "within-run SD", "between-run SD", "verdict"]


def _spread(variance: float, c: Comparison) -> str:
    """A variance component of a run's difference as a standard deviation: points (shares) or % of a's level."""
    if not math.isfinite(variance):
        return "-"
    if c.metric in SHARE_METRICS:
        return f"{math.sqrt(variance) * 100:.2f} pts"
    return f"{math.sqrt(variance) / abs(c.baseline) * 100:.1f}%" if c.baseline else "-"


def replication_rows(comparisons: Sequence[Comparison]) -> list[list[str]]:
    """--repeats: each verdict's within-run and between-run variance (as standard deviations of a run's difference)."""
    return [
        [f"{c.level:g}", c.a, c.b, c.metric, f"{c.runs}", _spread(c.within_variance, c),
         _spread(c.between_variance, c), c.verdict]
        for c in comparisons
        if c.runs > 1
    ]  # fmt: skip


REPLICATION_TEXT = (
    "Verdicts rest on the run-level differences (a Student t interval over runs). Within-run SD: the standard "
    "error of one run's difference from its own blocks (a longer run shrinks it); between-run SD: the spread of the "
    "run-level differences beyond that (the variants' own state, drawn anew at every restart: only more runs "
    "average it out)."
)


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


def write_results(
    results: Sequence[LevelResult],
    comparisons: Sequence[Comparison],
    folder: Path,
    parameters: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """The measurements as data: results.json (parameters, rows, comparisons, and ``extra``: e.g. each run's own
    verdicts under --repeats), results.csv and comparisons.csv."""
    rows = [asdict(result) for result in results]
    verdicts = [asdict(comparison) for comparison in comparisons]
    document = {"parameters": parameters, "results": rows, "comparisons": verdicts, **(extra or {})}
    (folder / "results.json").write_text(json.dumps(document, indent=2, default=str), encoding="utf-8")
    flat = [{**{k: v for k, v in row.items() if k != "metadata"}, **row["metadata"]} for row in rows]
    with (folder / "results.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    with (folder / "comparisons.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(verdicts[0]) if verdicts else [])
        writer.writeheader()
        writer.writerows(verdicts)


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
        "(a difference may exist but is smaller than the margin); faster / slower (error rate: higher / lower): the "
        "interval excludes 0; inconclusive: neither, measure longer; not_saturated: every variant completed the "
        "offered rate, so throughput cannot tell them apart. Every request counts: refused, failed and timed-out "
        "requests enter the latency verdicts as lasting the client's timeout. Tail verdicts (p95_tail, p99_tail) "
        "compare each variant's share of requests above the pair's pooled p95/p99 (differences in percentage "
        "points). Intervals are Student t intervals over blocks (never resampled single "
        f"requests, whose latencies are correlated in time), each at {confidence:.1%} so that all verdicts of this "
        "report hold together at the confidence asked for (Bonferroni). Half-width and MDE (the smallest difference "
        "the run finds 80% of the time) are % of a's level: what this run could have seen."
    )

    lines = ["# xnli-serve variant comparison", "", f"Design: {design}.", "", f"Load: {mode}; {settings}.", ""]
    lines += ["## Summary", "", *[f"- {sentence}" for sentence in sentences], ""]
    lines += ["## Verdicts", "", reading, ""]
    lines += markdown.table(VERDICT_HEADER, verdict_rows(comparisons))
    replication = replication_rows(comparisons)
    if replication:
        runs = max(c.runs for c in comparisons)
        restart = "without restart (--url)" if "without restart" in comparisons[0].note else "restarted in between"
        lines += ["", "## Between runs", "", f"{runs} runs, the service {restart}. {REPLICATION_TEXT}", ""]
        lines += markdown.table(REPLICATION_HEADER, replication)
    looks = {(c.look, c.looks) for c in comparisons if c.looks > 1}
    if looks:
        lines += ["", "## Looks", ""]
        lines += [
            "Run until decided: each level measured in chunks, every verdict at the nominal level its look was "
            "given by the alpha-spending function (so the extra looks keep the false rate at the confidence asked "
            f"for). Looks taken per level (of planned): {', '.join(f'{a} of {b}' for a, b in sorted(looks))}.",
        ]
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
        *table(VERDICT_HEADER, verdict_rows(comparisons)),
        *(
            [f"<h2>Between runs</h2><p>{html.escape(REPLICATION_TEXT)}</p>", *table(REPLICATION_HEADER, replication)]
            if replication
            else []
        ),
        "<h2>Results per variant</h2>",
    ]
    for variant, caption, body in tables:
        parts.append(f"<h3>{html.escape(variant)}</h3><p>{html.escape(caption)}</p>")
        parts += table(header, body)
    parts += [f"<h2>{html.escape(name)}</h2><img src='{name}'>" for name in images]
    parts.append("</body></html>")
    (folder / "report.html").write_text("\n".join(parts), encoding="utf-8")
