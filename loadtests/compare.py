"""Compare variants as deployed: the same Locust load against each variant in turn, at several load levels.

    python -m loadtests.compare --users 1,8,32 --duration 30 --out reports/compare
    python -m loadtests.compare --url http://127.0.0.1:8000 --variants xlmr-mnli,xlmr-squad-mnli --rates 20,60

Variants run one at a time so they do not compete. Each (variant, level) is a headless Locust run after a discarded
warm-up run; its Locust CSV stats and the service's Prometheus histograms for the same window are collected. The
report folder gets report.md, report.html, results.csv, results.json and PNG plots, with a summary at the top that
is computed from the data (which variants are statistically indistinguishable in latency, which differ and by how
much).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.local_server import local_server
from loadtests import report

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


@dataclass
class LevelResult:
    """One (variant, load level) run: Locust's numbers and the service's own for the same window."""

    variant: str
    mode: str  # "users" (closed loop) or "rate" (fixed arrival rate, requests/s)
    offered: float
    requests: int
    failures: int
    error_rate: float
    requests_per_s: float
    pairs_per_s: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    queue_ms: float
    inference_ms: float
    other_ms: float
    queue_share: float
    mean_batch_size: float
    padding_ratio: float
    metadata: dict[str, Any] = field(default_factory=dict)


def parse_levels(text: str) -> list[float]:
    return [float(item) for item in text.split(",") if item.strip()]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def delta(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    """Change of the samples called ``name`` whose labels include ``labels``, summed."""
    wanted = set(labels.items())
    total = 0.0
    for (sample_name, sample_labels), value in after.items():
        if sample_name == name and wanted <= set(sample_labels):
            total += value - before.get((sample_name, sample_labels), 0.0)
    return total


def read_locust_stats(prefix: Path) -> dict[tuple[str, str], dict[str, str]]:
    with Path(f"{prefix}_stats.csv").open(encoding="utf-8", newline="") as handle:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(handle)}


def run_locust(
    url: str,
    variant: str,
    mode: str,
    level: float,
    seconds: float,
    prefix: Path,
    pairs_per_request: int,
    xnli_dir: str | None,
    languages: str | None,
) -> None:
    users = int(level) if mode == "users" else max(1, min(200, int(np.ceil(level))))
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        url,
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{max(1, round(seconds))}s",
        "--stop-timeout",
        "10",
        "--csv",
        str(prefix),
        "--only-summary",
        "--exit-code-on-error",
        "0",
        "--variants",
        variant,
        "--pairs-per-request",
        str(pairs_per_request),
        "--samples-file",
        f"{prefix}_samples.json",
        "--loglevel",
        "WARNING",
    ]
    if mode == "rate":
        command += ["--arrival-rate", str(level)]
    if xnli_dir:
        command += ["--xnli-dir", xnli_dir]
    if languages:
        command += ["--languages", languages]
    subprocess.run(command, check=True, capture_output=True, timeout=seconds + 120)


def measure(
    url: str,
    variant: str,
    mode: str,
    level: float,
    seconds: float,
    folder: Path,
    pairs_per_request: int,
    xnli_dir: str | None,
    languages: str | None,
) -> LevelResult:
    prefix = folder / f"{variant}-{mode}-{level:g}"
    before = scrape(url)
    run_locust(url, variant, mode, level, seconds, prefix, pairs_per_request, xnli_dir, languages)
    after = scrape(url)
    stats = read_locust_stats(prefix)
    name = f"{variant} /predict" if pairs_per_request == 1 else f"{variant} /predict x{pairs_per_request}"
    post = stats[("POST", name)]
    requests = int(post["Request Count"])
    failures = int(post["Failure Count"])

    def average(kind: str) -> float:
        row = stats.get((kind, variant))
        return float(row["Average Response Time"]) if row else 0.0

    queue_sum = delta(before, after, "xnli_queue_duration_seconds_sum", variant=variant)
    request_sum = delta(before, after, "xnli_request_duration_seconds_sum", variant=variant)
    batches = delta(before, after, "xnli_batch_size_count", variant=variant)
    padding_sum = delta(before, after, "xnli_batch_padding_ratio_sum", variant=variant)
    return LevelResult(
        variant=variant,
        mode=mode,
        offered=level,
        requests=requests,
        failures=failures,
        error_rate=failures / requests if requests else 0.0,
        requests_per_s=float(post["Requests/s"]),
        pairs_per_s=float(post["Requests/s"]) * pairs_per_request,
        p50_ms=float(post["50%"]),
        p90_ms=float(post["90%"]),
        p95_ms=float(post["95%"]),
        p99_ms=float(post["99%"]),
        mean_ms=float(post["Average Response Time"]),
        queue_ms=average("queue"),
        inference_ms=average("inference"),
        other_ms=average("other"),
        queue_share=queue_sum / request_sum if request_sum else 0.0,
        mean_batch_size=delta(before, after, "xnli_batch_size_sum", variant=variant) / batches if batches else 0.0,
        padding_ratio=padding_sum / batches if batches else 0.0,
    )


def compare(args: argparse.Namespace, url: str) -> list[LevelResult]:
    catalogue = httpx.get(f"{url}/variants", timeout=10).json()
    metadata = {entry["name"]: entry for entry in catalogue["variants"] if entry["status"] == "ready"}
    variants = [name.strip() for name in args.variants.split(",") if name.strip()] if args.variants else list(metadata)
    unknown = [name for name in variants if name not in metadata]
    if unknown:
        raise SystemExit(f"variants not served at {url}: {unknown}")
    mode, levels = ("rate", parse_levels(args.rates)) if args.rates else ("users", parse_levels(args.users))
    raw = args.out / "locust"
    raw.mkdir(parents=True, exist_ok=True)
    results = []
    for variant in variants:
        if args.warmup > 0:  # discarded: first batches, allocator growth, connection set-up
            run_locust(
                url,
                variant,
                mode,
                levels[0],
                args.warmup,
                raw / f"{variant}-warmup",
                args.pairs_per_request,
                args.xnli_dir,
                args.languages,
            )
        for level in levels:
            print(f"{variant}: {mode}={level:g} for {args.duration:g}s", flush=True)
            result = measure(
                url, variant, mode, level, args.duration, raw, args.pairs_per_request, args.xnli_dir, args.languages
            )
            entry = metadata[variant]
            result.metadata = {key: entry.get(key) for key in REPORTED_METADATA}
            results.append(result)
    return results


REPORTED_METADATA = (
    "intermediate_task", "base_model", "dtype", "backend", "quantization", "device", "parameters", "untrained",
)  # fmt: skip


def write_results(results: list[LevelResult], folder: Path) -> None:
    rows = [asdict(result) for result in results]
    (folder / "results.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    flat = [{**{k: v for k, v in row.items() if k != "metadata"}, **row["metadata"]} for row in rows]
    with (folder / "results.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="A running xnli-serve; default: start one from --catalogue on a free port")
    parser.add_argument("--catalogue", type=Path, default=Path("model_store/variants.toml"))
    parser.add_argument("--variants", default="", help="Comma-separated (default: every ready variant)")
    parser.add_argument("--users", default="1,8,32", help="Closed-loop user counts (the load levels)")
    parser.add_argument("--rates", default="", help="Fixed arrival rates in requests/s instead of --users")
    parser.add_argument("--duration", type=float, default=20.0, help="Seconds measured per level")
    parser.add_argument("--warmup", type=float, default=3.0, help="Seconds of discarded load per variant")
    parser.add_argument("--pairs-per-request", type=int, default=1)
    parser.add_argument("--xnli-dir", default=None, help="XNLI-format folder for payloads (default: shipped sample)")
    parser.add_argument("--languages", default=None)
    parser.add_argument("--out", type=Path, default=Path("reports") / time.strftime("compare-%Y%m%d-%H%M%S"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.url:
        results = compare(args, args.url.rstrip("/"))
    else:
        with local_server(args.catalogue, args.out / "server.log") as server:
            results = compare(args, server.base_url)
    write_results(results, args.out)
    samples = report.load_samples(args.out / "locust")
    report.write_report(results, samples, args.out, vars(args))
    print(f"report: {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
