"""The comparison report: tables, plots and a summary computed from the measurements (never hand-written)."""

from __future__ import annotations

import html
import itertools
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from app.engine.catalogue import runtime_label

if TYPE_CHECKING:
    from loadtests.compare import LevelResult

BOOTSTRAP_ROUNDS = 2000
MAX_SAMPLES = 5000


@dataclass(frozen=True)
class MedianDifference:
    level: float
    first: str
    second: str
    difference_ms: float  # median(second) - median(first)
    low_ms: float
    high_ms: float
    relative: float

    @property
    def indistinguishable(self) -> bool:
        return self.low_ms <= 0.0 <= self.high_ms


def samples_path(folder: Path, result: LevelResult) -> Path:
    return folder / f"{result.variant}-{result.mode}-{result.offered:g}_samples.json"


def load_samples(folder: Path) -> dict[str, list[float]]:
    """Every *_samples.json under ``folder``, keyed by file stem: latencies (ms) of successful requests."""
    loaded = {}
    for path in sorted(folder.glob("*_samples.json")):
        per_name = json.loads(path.read_text(encoding="utf-8"))
        loaded[path.name.removesuffix("_samples.json")] = [value for values in per_name.values() for value in values]
    return loaded


def bootstrap_median_difference(
    first: npt.NDArray[np.float64], second: npt.NDArray[np.float64], seed: int = 0
) -> tuple[float, float, float]:
    """median(second) - median(first) with a 95% percentile-bootstrap interval."""
    generator = np.random.default_rng(seed)
    if len(first) > MAX_SAMPLES:
        first = generator.choice(first, MAX_SAMPLES, replace=False)
    if len(second) > MAX_SAMPLES:
        second = generator.choice(second, MAX_SAMPLES, replace=False)
    first_medians = np.median(generator.choice(first, (BOOTSTRAP_ROUNDS, len(first))), axis=1)
    second_medians = np.median(generator.choice(second, (BOOTSTRAP_ROUNDS, len(second))), axis=1)
    differences = second_medians - first_medians
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(np.median(second) - np.median(first)), float(low), float(high)


def pairwise(results: list[LevelResult], samples: dict[str, list[float]]) -> list[MedianDifference]:
    by_level: dict[float, list[LevelResult]] = defaultdict(list)
    for result in results:
        by_level[result.offered].append(result)
    comparisons = []
    for level, group in sorted(by_level.items()):
        for first, second in itertools.combinations(group, 2):
            a = np.asarray(samples.get(f"{first.variant}-{first.mode}-{first.offered:g}", []), dtype=np.float64)
            b = np.asarray(samples.get(f"{second.variant}-{second.mode}-{second.offered:g}", []), dtype=np.float64)
            if len(a) < 10 or len(b) < 10:
                continue
            difference, low, high = bootstrap_median_difference(a, b)
            base = float(np.median(a))
            comparisons.append(
                MedianDifference(
                    level, first.variant, second.variant, difference, low, high, difference / base if base else 0.0
                )
            )
    return comparisons


def _architecture(result: LevelResult) -> tuple[Any, ...]:
    metadata = result.metadata
    return (metadata.get("base_model"), runtime_label(metadata), metadata.get("device"), metadata.get("parameters"))


def summary(results: list[LevelResult], comparisons: list[MedianDifference]) -> list[str]:
    """Plain sentences, every number taken from the results."""
    lines = []
    unit = "users" if results[0].mode == "users" else "requests/s offered"
    top = max(result.offered for result in results)
    at_top = [result for result in results if result.offered == top]
    fastest = min(at_top, key=lambda result: result.p50_ms)
    slowest = max(at_top, key=lambda result: result.p50_ms)
    best = max(at_top, key=lambda result: result.pairs_per_s)
    lines.append(
        f"At the highest load ({top:g} {unit}), the lowest median latency is {fastest.variant} "
        f"({fastest.p50_ms:g} ms, p99 {fastest.p99_ms:g} ms) and the highest {slowest.variant} "
        f"({slowest.p50_ms:g} ms, p99 {slowest.p99_ms:g} ms); the highest throughput is {best.variant} "
        f"({best.pairs_per_s:.1f} pairs/s)."
    )
    errors = [result for result in results if result.failures]
    if errors:
        worst = max(errors, key=lambda result: result.error_rate)
        lines.append(
            f"Errors occurred in {len(errors)} run(s); worst: {worst.variant} at {worst.offered:g} {unit} "
            f"({worst.error_rate:.1%})."
        )
    else:
        lines.append("No request failed in any run.")
    architecture = {result.variant: _architecture(result) for result in results}
    same = [c for c in comparisons if architecture[c.first] == architecture[c.second]]
    if same:
        alike = sum(c.indistinguishable for c in same)
        sentence = (
            f"Variants of the same architecture, runtime and device: {alike} of {len(same)} pairwise comparisons are "
            "statistically indistinguishable in median latency (95% bootstrap interval of the difference contains 0)"
        )
        if alike == len(same):
            sentence += ", as expected when only the weights differ."
        else:
            sentence += (
                "; the others differ although only the weights do, so run-to-run variation of the machine (variants "
                "run one after another) is at least that large: lengthen --duration or repeat the comparison."
            )
        lines.append(sentence)
    differ = [c for c in comparisons if not c.indistinguishable]
    for comparison in sorted(differ, key=lambda c: -abs(c.relative))[:6]:
        direction = "slower" if comparison.difference_ms > 0 else "faster"
        lines.append(
            f"At {comparison.level:g} {unit}, {comparison.second} is {abs(comparison.difference_ms):.2f} ms "
            f"({abs(comparison.relative):.1%}) {direction} than {comparison.first} in median latency "
            f"(95% CI {comparison.low_ms:+.2f} to {comparison.high_ms:+.2f} ms)."
        )
    if comparisons and not differ:
        lines.append("No pair of variants differs significantly in median latency at any load level.")
    for result in at_top:
        if result.queue_share > 0.5:
            lines.append(
                f"{result.variant} spends {result.queue_share:.0%} of its in-service time queued at {top:g} {unit}: "
                "it is saturated there."
            )
    return lines


def plots(results: list[LevelResult], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(result.variant for result in results))
    unit = "users" if results[0].mode == "users" else "offered requests/s"
    colors = {variant: f"C{index}" for index, variant in enumerate(variants)}
    names = []

    figure, axis = plt.subplots(figsize=(8, 4.5))
    for variant in variants:
        rows = sorted((r for r in results if r.variant == variant), key=lambda r: r.offered)
        x = [r.offered for r in rows]
        axis.plot(x, [r.p50_ms for r in rows], "-o", color=colors[variant], label=f"{variant} p50")
        axis.plot(x, [r.p99_ms for r in rows], "--", color=colors[variant], label=f"{variant} p99")
    axis.set(xlabel=unit, ylabel="latency (ms)", title="Latency percentiles vs offered load")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(folder / "latency.png", dpi=120)
    plt.close(figure)
    names.append("latency.png")

    figure, axis = plt.subplots(figsize=(8, 4.5))
    for variant in variants:
        rows = sorted((r for r in results if r.variant == variant), key=lambda r: r.offered)
        axis.plot([r.offered for r in rows], [r.pairs_per_s for r in rows], "-o", color=colors[variant], label=variant)
    axis.set(xlabel=unit, ylabel="achieved pairs/s", title="Throughput vs offered load")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(folder / "throughput.png", dpi=120)
    plt.close(figure)
    names.append("throughput.png")

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
    figure.savefig(folder / "breakdown.png", dpi=120)
    plt.close(figure)
    names.append("breakdown.png")
    return names


COLUMNS = (
    ("offered", "load", "{:g}"),
    ("requests_per_s", "req/s", "{:.1f}"),
    ("pairs_per_s", "pairs/s", "{:.1f}"),
    ("p50_ms", "p50 ms", "{:g}"),
    ("p90_ms", "p90 ms", "{:g}"),
    ("p95_ms", "p95 ms", "{:g}"),
    ("p99_ms", "p99 ms", "{:g}"),
    ("error_rate", "errors", "{:.2%}"),
    ("mean_batch_size", "mean batch", "{:.2f}"),
    ("queue_share", "queue share", "{:.0%}"),
    ("padding_ratio", "padding", "{:.0%}"),
)


def _tables(results: list[LevelResult]) -> list[tuple[str, str, list[list[str]]]]:
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


def write_report(
    results: list[LevelResult], samples: dict[str, list[float]], folder: Path, parameters: dict[str, Any]
) -> None:
    comparisons = pairwise(results, samples)
    sentences = summary(results, comparisons)
    images = plots(results, folder)
    tables = _tables(results)
    mode = "closed loop, users" if results[0].mode == "users" else "fixed arrival rate, requests/s"
    settings = ", ".join(
        f"{key}={value}"
        for key, value in parameters.items()
        if key in ("duration", "warmup", "pairs_per_request", "xnli_dir", "languages") and value is not None
    )
    header = [column for _, column, _ in COLUMNS]

    lines = ["# xnli-serve variant comparison", "", f"Load: {mode}; {settings}.", "", "## Summary", ""]
    lines += [f"- {sentence}" for sentence in sentences]
    lines += ["", "## Results per variant", ""]
    for variant, caption, body in tables:
        lines += [f"### {variant}", "", caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        lines.append("")
    lines += [
        "Latency percentiles are Locust's (client side); `mean batch`, `queue share` (queue time / in-service time) "
        "and `padding` come from the service's Prometheus histograms over the same window.",
        "",
        "## Pairwise median latency differences",
        "",
        "| load | first | second | second - first (ms) | 95% CI (ms) | relative | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        verdict = "indistinguishable" if c.indistinguishable else "differs"
        lines.append(
            f"| {c.level:g} | {c.first} | {c.second} | {c.difference_ms:+.2f} | {c.low_ms:+.2f} .. {c.high_ms:+.2f} "
            f"| {c.relative:+.1%} | {verdict} |"
        )
    lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in images]
    (folder / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>xnli-serve variant comparison</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style></head><body>",
        "<h1>xnli-serve variant comparison</h1>",
        f"<p>Load: {html.escape(mode)}; {html.escape(settings)}.</p><h2>Summary</h2><ul>",
        *[f"<li>{html.escape(sentence)}</li>" for sentence in sentences],
        "</ul><h2>Results per variant</h2>",
    ]
    for variant, caption, body in tables:
        parts.append(f"<h3>{html.escape(variant)}</h3><p>{html.escape(caption)}</p><table><tr>")
        parts += [f"<th>{html.escape(column)}</th>" for column in header]
        parts.append("</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in body]
        parts.append("</table>")
    parts += [f"<h2>{html.escape(name)}</h2><img src='{name}'>" for name in images]
    parts.append("</body></html>")
    (folder / "report.html").write_text("\n".join(parts), encoding="utf-8")
