"""The evaluation report: accuracy per language and latency per variant, paired tests against the baseline."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app import markdown
from app.engine.models.catalogue import runtime_label
from app.engine.tasks.nli import LABELS
from app.evaluation.stats import PairedComparison, confusion_matrix, pareto_front


@dataclass
class VariantResult:
    variant: str
    metadata: dict[str, Any]
    accuracy: dict[str, float]  # per language, plus "avg" (mean over languages) and "all" (pooled)
    latency_p50_ms: float
    latency_p95_ms: float
    pairs_per_s: float
    confusion: list[list[int]]
    versus_baseline: dict[str, dict[str, Any]] = field(default_factory=dict)


def build_results(
    scores: dict[str, Any],
    gold: np.ndarray,
    languages: np.ndarray,
    language_order: list[str],
    metadata: dict[str, dict[str, Any]],
    baseline: str,
) -> list[VariantResult]:
    from app.evaluation.stats import accuracy, paired_comparison

    results = []
    for variant, variant_scores in scores.items():
        predicted = variant_scores.predicted
        per_language = {
            language: accuracy(predicted[languages == language], gold[languages == language])
            for language in language_order
        }
        per_language["avg"] = float(np.mean([per_language[language] for language in language_order]))
        per_language["all"] = accuracy(predicted, gold)
        latencies = np.array(variant_scores.request_latencies_s) * 1000
        result = VariantResult(
            variant=variant,
            metadata=metadata[variant],
            accuracy=per_language,
            latency_p50_ms=float(np.percentile(latencies, 50)),
            latency_p95_ms=float(np.percentile(latencies, 95)),
            pairs_per_s=variant_scores.pairs_per_s,
            confusion=confusion_matrix(predicted, gold).tolist(),
        )
        if variant != baseline:
            reference = scores[baseline].predicted
            for language in [*language_order, "all"]:
                mask = np.ones(len(gold), dtype=bool) if language == "all" else languages == language
                comparison: PairedComparison = paired_comparison(predicted[mask], reference[mask], gold[mask])
                result.versus_baseline[language] = {**asdict(comparison), "significant": comparison.significant}
        results.append(result)
    return results


def summary(results: list[VariantResult], baseline: str, language_order: list[str]) -> list[str]:
    lines = []
    best = max(results, key=lambda result: result.accuracy["avg"])
    base = next(result for result in results if result.variant == baseline)
    lines.append(
        f"Best average accuracy: {best.variant} ({best.accuracy['avg']:.1%} over {len(language_order)} languages; "
        f"baseline {baseline}: {base.accuracy['avg']:.1%})."
    )
    if best.variant != baseline:
        wins = [
            lang
            for lang in language_order
            if best.versus_baseline[lang]["significant"] and best.versus_baseline[lang]["difference"] > 0
        ]
        losses = [
            lang
            for lang in language_order
            if best.versus_baseline[lang]["significant"] and best.versus_baseline[lang]["difference"] < 0
        ]
        overall = best.versus_baseline["all"]
        lines.append(
            f"{best.variant} vs {baseline}: {overall['difference']:+.1%} on all pairs "
            f"(McNemar p = {overall['p_value']:.3g}); significantly better in {', '.join(wins) or 'no language'}, "
            f"worse in {', '.join(losses) or 'no language'}."
        )
    for result in results:
        if result.variant == baseline:
            continue
        significant = [lang for lang in language_order if result.versus_baseline[lang]["significant"]]
        lines.append(
            f"{result.variant} ({result.metadata.get('intermediate_task')}) differs significantly from the baseline in "
            f"{len(significant)} of {len(language_order)} languages"
            + (f" ({', '.join(significant)})." if significant else ".")
        )
    groups: dict[tuple[Any, ...], list[VariantResult]] = {}
    for result in results:
        meta = result.metadata
        key = (meta.get("base_model"), runtime_label(meta), meta.get("device"), meta.get("parameters"))
        groups.setdefault(key, []).append(result)
    for key, members in groups.items():
        if len(members) > 1:
            p50s = [member.latency_p50_ms for member in members]
            spread = (max(p50s) - min(p50s)) / min(p50s) if min(p50s) else 0.0
            lines.append(
                f"Same architecture and runtime ({key[0]}, {key[1]}, {key[2]}): {len(members)} variants, "
                f"request p50 from {min(p50s):.1f} to {max(p50s):.1f} ms ({spread:.0%} spread)."
            )
    front = pareto_front([(result.latency_p50_ms, result.accuracy["avg"]) for result in results])
    lines.append(
        "Accuracy/latency Pareto front: "
        + ", ".join(
            f"{results[i].variant} ({results[i].accuracy['avg']:.1%}, {results[i].latency_p50_ms:.1f} ms)"
            for i in front
        )
        + "."
    )
    untrained = [result.variant for result in results if result.metadata.get("untrained")]
    if untrained:
        lines.append(
            f"UNTRAINED demo weights: {', '.join(untrained)}; their accuracy should sit near chance (33%) and says "
            "nothing about intermediate-task training."
        )
    return lines


def plots(results: list[VariantResult], language_order: list[str], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [*language_order, "avg"]
    matrix = np.array([[result.accuracy[column] * 100 for column in columns] for result in results])
    figure, axis = plt.subplots(figsize=(max(6, 0.6 * len(columns) + 3), 0.5 * len(results) + 2))
    image = axis.imshow(matrix, cmap="viridis", aspect="auto")
    axis.set_xticks(range(len(columns)), columns)
    axis.set_yticks(range(len(results)), [result.variant for result in results])
    for row in range(matrix.shape[0]):
        for column in range(matrix.shape[1]):
            axis.text(column, row, f"{matrix[row, column]:.0f}", ha="center", va="center", color="white", fontsize=7)
    figure.colorbar(image, ax=axis, label="accuracy (%)")
    axis.set_title("XNLI accuracy per language")
    figure.tight_layout()
    figure.savefig(folder / "accuracy_heatmap.png", dpi=120)
    plt.close(figure)

    points = [(result.latency_p50_ms, result.accuracy["avg"] * 100) for result in results]
    front = sorted(pareto_front([(x, y / 100) for x, y in points]), key=lambda index: points[index][0])
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for result, (x, y) in zip(results, points, strict=True):
        axis.scatter(x, y, s=40)
        axis.annotate(result.variant, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axis.plot([points[i][0] for i in front], [points[i][1] for i in front], "k--", lw=1, label="Pareto front")
    axis.set(xlabel="request latency p50 (ms)", ylabel="average accuracy (%)", title="Accuracy vs latency")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(folder / "accuracy_vs_latency.png", dpi=120)
    plt.close(figure)
    return ["accuracy_heatmap.png", "accuracy_vs_latency.png"]


def write_report(
    results: list[VariantResult], baseline: str, language_order: list[str], folder: Path, parameters: dict[str, Any]
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [asdict(result) for result in results]
    (folder / "results.json").write_text(
        json.dumps(
            {"baseline": baseline, "languages": language_order, "parameters": parameters, "variants": rows}, indent=2
        ),
        encoding="utf-8",
    )
    with (folder / "results.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "intermediate_task", "base_model", "dtype", "backend", "quantization", "device",
                         *language_order, "avg", "all",
                         "latency_p50_ms", "latency_p95_ms", "pairs_per_s"])  # fmt: skip
        for result in results:
            meta = result.metadata
            writer.writerow(
                [
                    result.variant,
                    meta.get("intermediate_task"),
                    meta.get("base_model"),
                    meta.get("dtype"),
                    meta.get("backend", "torch"),
                    meta.get("quantization", "none"),
                    meta.get("device"),
                ]
                + [f"{result.accuracy[column]:.6f}" for column in [*language_order, "avg", "all"]]
                + [f"{result.latency_p50_ms:.3f}", f"{result.latency_p95_ms:.3f}", f"{result.pairs_per_s:.2f}"]
            )
    images = plots(results, language_order, folder)
    columns = [*language_order, "avg"]
    lines = [
        "# XNLI evaluation",
        "",
        f"Data: {parameters.get('data')}; path: {parameters.get('path')}; baseline: {baseline}.",
        "",
    ]
    lines += ["## Summary", "", *[f"- {sentence}" for sentence in summary(results, baseline, language_order)], ""]
    lines += ["## Accuracy (%) and latency", ""]
    header = ["intermediate task", "variant", "base model", "runs as", *columns, "p50 ms", "p95 ms", "pairs/s"]
    table_rows = []
    for result in sorted(results, key=lambda r: str(r.metadata.get("intermediate_task"))):
        meta = result.metadata
        name = result.variant + (" (untrained demo)" if meta.get("untrained") else "")
        cells = [str(meta.get("intermediate_task")), name, str(meta.get("base_model")), runtime_label(meta)]
        cells += [f"{result.accuracy[column] * 100:.1f}" for column in columns]
        cells += [f"{result.latency_p50_ms:.1f}", f"{result.latency_p95_ms:.1f}", f"{result.pairs_per_s:.1f}"]
        table_rows.append(cells)
    lines += markdown.table(header, table_rows)
    lines += [
        "",
        f"## Difference from the baseline ({baseline}), accuracy points; * = significant at 95% (McNemar)",
        "",
    ]
    header = ["variant", *language_order, "all"]
    table_rows = []
    for result in results:
        if result.variant == baseline:
            continue
        cells = [result.variant]
        for column in [*language_order, "all"]:
            comparison = result.versus_baseline[column]
            cells.append(f"{comparison['difference'] * 100:+.1f}{'*' if comparison['significant'] else ''}")
        table_rows.append(cells)
    lines += markdown.table(header, table_rows)
    lines += ["", "## Confusion matrices (rows: gold, columns: predicted)", ""]
    for result in results:
        counts = [[label, *(str(count) for count in row)] for label, row in zip(LABELS, result.confusion, strict=True)]
        lines += [f"**{result.variant}**", "", *markdown.table(["gold \\ predicted", *LABELS], counts), ""]
    lines += ["## Plots", "", *[f"![{name}]({name})" for name in images]]
    (folder / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
