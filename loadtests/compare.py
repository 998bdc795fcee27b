"""Compare variants as deployed, under the same Locust load, with verdicts that survive machine drift.

    python -m loadtests.compare --users 1,8,32 --duration 30 --out reports/compare
    python -m loadtests.compare --url http://127.0.0.1:8000 --variants xlmr-mnli,xlmr-squad-mnli --rates 20,60
    python -m loadtests.compare --mode capacity --users 32 --block-seconds 2 --rounds 6

Interleaved (the default): at each load level every variant runs in the same time window; each Locust user cycles
through its own seeded shuffle of the variants, so drift, noise and order effects fall on all of them alike. The
window is cut into time blocks, each block gives one median latency per variant, and each pair of variants gets a
verdict (faster / slower / equivalent within --margin / inconclusive) from the paired block differences.

Capacity (``--mode capacity``): what one variant sustains alone. Variants run one at a time in short alternating
blocks (A B C, B C A, C A B, ...: at least 3 rounds, every variant in every position equally often), and throughput
and median latency are compared as paired differences within rounds.

The report folder gets report.md, report.html, results.csv, results.json (per-variant rows and a ``comparisons``
list) and PNG plots, with a summary computed from the data.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.local_server import local_server
from app.settings import DEFAULT_CATALOGUE
from loadtests import analysis, outcomes, repeats, report, sequential, slo, slo_run, stats
from loadtests.measurements import GUARD_FRACTION, unit_of
from loadtests.measurements import LevelResult as LevelResult  # re-exported: callers name compare.Samples
from loadtests.measurements import Samples as Samples
from loadtests.scrape import MetricSamples, delta, scrape

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


def parse_levels(text: str) -> list[float]:
    return [float(item) for item in text.split(",") if item.strip()]


@dataclass(frozen=True)
class LoadSettings:
    url: str
    variants: list[str]
    mode: str
    pairs_per_request: int
    xnli_dir: str | None
    languages: str | None
    api_key: str
    request_timeout: float = outcomes.DEFAULT_TIMEOUT_S


def run_locust(
    load: LoadSettings, level: float, seconds: float, prefix: Path, seed: int, block_order: list[str] | None = None,
    block_seconds: float = 0.0, open_loop: slo_run.OpenLoop | None = None,
    trace: list[tuple[float, float]] | None = None,
) -> float:  # fmt: skip
    """One headless Locust run; returns the load generator's CPU use, in cores per process (near 1: saturated).
    With ``trace``, appends (epoch time, CPU seconds used so far) every CPU_TRACE_SECONDS while it runs."""
    users = int(level) if load.mode == "users" else max(1, min(200, int(np.ceil(level))))
    if open_loop:
        users = open_loop.users
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", load.url,
        "-u", str(users), "-r", str(users), "-t", f"{max(1, round(seconds))}s", "--stop-timeout", "10",
        "--csv", str(prefix), "--only-summary", "--exit-code-on-error", "0",
        "--variants", ",".join(load.variants), "--pairs-per-request", str(load.pairs_per_request),
        "--samples-file", f"{prefix}_samples.json", "--seed", str(seed), "--loglevel", "WARNING",
        "--request-timeout", f"{load.request_timeout:g}",
    ]  # fmt: skip
    if block_order:
        command += [
            "--schedule",
            "blocks",
            "--block-order",
            ",".join(block_order),
            "--block-seconds",
            f"{block_seconds}",
        ]
    if load.mode == "rate":
        command += ["--arrival-rate", str(level)]
    if open_loop:
        command += ["--block-rates", ",".join(f"{rate:.4g}" for rate in open_loop.block_rates), "--poisson"]
        command += ["--schedule-at", f"{open_loop.schedule_at:.3f}"]
        if open_loop.gap_seconds > 0:
            command += ["--block-gap", f"{open_loop.gap_seconds:g}"]
        if open_loop.processes > 1:
            command += ["--processes", str(open_loop.processes)]
    if load.xnli_dir:
        command += ["--xnli-dir", load.xnli_dir]
    if load.languages:
        command += ["--languages", load.languages]
    env = {**os.environ, "XNLI_SERVE_API_KEY": load.api_key}  # not on the command line, where `ps` shows it
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, env=env, text=True)
        try:
            while process.poll() is None:
                if trace is not None:
                    used_now = process_cpu_seconds(process.pid, children=bool(open_loop and open_loop.processes > 1))
                    if used_now is not None:
                        trace.append((time.time(), used_now))
                if time.monotonic() - started > seconds + 120:
                    raise SystemExit(f"locust did not stop within {seconds + 120:.0f}s")
                time.sleep(CPU_TRACE_SECONDS)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        errors.seek(0)
        stderr = errors.read()
    after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic() - started
    if process.returncode != 0:
        raise SystemExit(f"locust failed ({process.returncode}):\n{stderr[-3000:]}")
    used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return used / max(wall, 1e-9) / (open_loop.processes if open_loop else 1)


CPU_TRACE_SECONDS = 0.1  # how often the load generator's CPU is read while it runs (SLO mode)
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        return handle.read().rsplit(")", 1)[1].split()  # after "pid (name)": state, ppid, ...


def process_cpu_seconds(pid: int, children: bool = False) -> float | None:
    """CPU seconds used so far by a process and the children it waited for, with ``children`` also its live ones
    (Locust's --processes workers), from /proc (None where there is no /proc)."""
    try:
        fields = _stat(pid)
    except OSError:
        return None
    ticks = sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    if not children:
        return ticks / _TICKS
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        pids = []
    for child in pids:
        try:
            theirs = _stat(child)
        except OSError:
            continue
        if int(theirs[1]) == pid:
            ticks += int(theirs[11]) + int(theirs[12])
    return ticks / _TICKS


def variant_results(
    load: LoadSettings, level: float, design: str, samples: Samples, before: MetricSamples, after: MetricSamples
) -> list[LevelResult]:
    """Per-variant numbers from the measured requests, and the service's histograms over the same run. Percentiles
    count every request: one without an answer lasts at least the client's timeout (outcomes.censored)."""
    results = []
    measured = samples.measured()
    total = len(measured.start)
    for index, variant in enumerate(samples.variants):
        mine = measured.subset(measured.variant == index)
        good = mine.subset(mine.ok)
        if design == "capacity":
            blocks = sum(1 for name in samples.block_order if name == variant)
            window = blocks * samples.block_seconds * (1 - GUARD_FRACTION)
        else:
            window = float(measured.start.max() - measured.start.min()) if total > 1 else 0.0
        censored = mine.censored_ms()
        latencies = censored if len(censored) else np.array([np.nan])
        p50, p90, p95, p99 = (float(value) for value in np.percentile(latencies, [50, 90, 95, 99]))
        queue_sum = delta(before, after, "xnli_queue_duration_seconds_sum", variant=variant)
        request_sum = delta(before, after, "xnli_request_duration_seconds_sum", variant=variant)
        batches = delta(before, after, "xnli_batch_size_count", variant=variant)
        padding_sum = delta(before, after, "xnli_batch_padding_ratio_sum", variant=variant)
        requests = len(mine.start)
        failures = int(np.sum(~mine.ok))
        sent_rate = requests / window if window else 0.0
        rate = len(good.start) / window if window else 0.0
        offered = 0.0
        if load.mode == "rate":
            offered = level if design == "capacity" else level * requests / total if total else 0.0
        results.append(
            LevelResult(
                variant=variant,
                mode=load.mode,
                offered=level,
                design=design,
                requests=requests,
                failures=failures,
                error_rate=failures / requests if requests else 0.0,
                window_s=window,
                requests_per_s=sent_rate,
                pairs_per_s=rate * load.pairs_per_request,
                share=requests / total if total else 0.0,
                p50_ms=p50,
                p90_ms=p90,
                p95_ms=p95,
                p99_ms=p99,
                mean_ms=float(np.mean(latencies)),
                queue_ms=float(np.mean(good.queue_ms)) if len(good.start) else 0.0,
                inference_ms=float(np.mean(good.inference_ms)) if len(good.start) else 0.0,
                other_ms=float(np.mean(np.maximum(0.0, good.latency_ms - good.queue_ms - good.inference_ms)))
                if len(good.start)
                else 0.0,
                queue_share=queue_sum / request_sum if request_sum else 0.0,
                mean_batch_size=delta(before, after, "xnli_batch_size_sum", variant=variant) / batches
                if batches
                else 0.0,
                padding_ratio=padding_sum / batches if batches else 0.0,
                refused=int(np.sum(mine.outcome == outcomes.REFUSED)),
                timed_out=int(np.sum(mine.outcome == outcomes.TIMED_OUT)),
                completed_per_s=rate,
                offered_per_s=offered,
            )
        )
    return results


CAPACITY_MIN_ROUNDS = 6  # orders drawn per round need a few rounds for the interval to cover a periodic disturbance
SATURATION_SHARE = 0.95  # a variant that completed less than this share of the offered rate was saturated


def level_comparisons(
    design: str, level: float, samples: Samples, margin: float, alpha: float, block_seconds: float | None,
    pairs_per_request: int, offered_rate: float = 0.0, tail_margin: float = analysis.DEFAULT_TAIL_MARGIN,
    error_margin: float = analysis.DEFAULT_ERROR_MARGIN, seed: int = 0,
) -> list[stats.Comparison]:  # fmt: skip
    """The verdicts of one level (median, p95 and p99 tails, error rate; capacity: throughput too): interleaved time
    blocks, or alternating blocks paired by round. Every request counts, failures censored at the timeout."""
    measured = samples.measured()
    latency, failed = measured.censored_ms(), ~measured.ok
    if design == "interleaved":
        return analysis.compare_interleaved(
            samples.variants, level, measured.start, measured.variant, latency, margin, alpha, block_seconds, failed,
            analysis.METRICS, tail_margin, error_margin, seed,
        )  # fmt: skip
    order, k = samples.block_order, len(samples.variants)
    n_blocks = len(order)
    rounds = measured.block // k  # the order is whole rounds of k blocks
    found = analysis.compare_pairs(
        samples.variants, level, rounds, measured.variant, latency, failed, n_blocks // k, stats.ALTERNATING, margin,
        alpha, analysis.METRICS, tail_margin, error_margin, seed,
    )  # fmt: skip
    seconds = samples.block_seconds * (1 - GUARD_FRACTION)
    completed = np.bincount(measured.block[measured.ok], minlength=n_blocks)[:n_blocks].astype(np.float64)
    table = stats.round_values(order, samples.variants, list(completed * pairs_per_request / seconds))
    saturated = True
    if offered_rate > 0:  # every variant completed (nearly) all it was offered: throughput tells nothing apart
        achieved = np.nanmean(table, axis=0) / pairs_per_request
        saturated = bool(np.any(achieved < SATURATION_SHARE * offered_rate))
    return [*analysis.compare_throughput(samples.variants, level, table, margin, alpha, saturated), *found]


@dataclass
class Outcome:
    """Everything one compare run produced: per-variant rows, verdicts, and the raw samples per level (for plots)."""

    results: list[LevelResult]
    comparisons: list[stats.Comparison]
    samples: dict[float, Samples]
    alpha: float = 0.05  # each verdict's share of the report's error rate (Bonferroni)
    runs: list[list[stats.Comparison]] = field(default_factory=list)  # --repeats: each run's own verdicts


def compare(args: argparse.Namespace, url: str, run: int = 0) -> Outcome:
    """One run of every level (run ``run`` of --repeats: its own seeds and raw folder)."""
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=url, timeout=10, headers=headers) as client:
        variants, metadata = served_variants(client, url, args.variants)
        mode, levels = ("rate", parse_levels(args.rates)) if args.rates else ("users", parse_levels(args.users))
        load = LoadSettings(
            url, variants, mode, args.pairs_per_request, args.xnli_dir, args.languages, args.api_key,
            args.request_timeout,
        )  # fmt: skip
        design = args.mode
        metrics = len(analysis.METRICS) + (1 if design == "capacity" else 0)
        alpha = (1 - args.confidence) / stats.comparisons_in(len(variants), len(levels), metrics)
        rounds = args.rounds or stats.default_rounds(len(variants), CAPACITY_MIN_ROUNDS)
        raw = args.out / "locust" if args.repeats == 1 else args.out / "locust" / f"run-{run + 1}"
        raw.mkdir(parents=True, exist_ok=True)
        seed = args.seed + 1000 * run
        if args.warmup > 0:  # discarded: first batches, allocator growth, connection set-up; every variant
            run_locust(load, levels[0], args.warmup, raw / "warmup", seed)
        outcome = Outcome([], [], {}, alpha)
        for number, level in enumerate(levels):
            name = f"{design}-{mode}-{level:g}"
            parts: list[Samples] = []

            def measure(
                look: int, level: float = level, number: int = number, name: str = name, parts: list[Samples] = parts
            ) -> Samples:
                """One more chunk of the level (look 1: the first), appended to what it measured so far."""
                prefix = raw / (name if look == 1 else f"{name}-look{look}")
                order = (
                    stats.randomized_block_order(variants, rounds, seed + number + 100 * (look - 1))
                    if design == "capacity"
                    else None
                )
                seconds = len(order) * args.block_seconds + 3 if order else args.duration  # + spawning, stop
                print(f"{design} {mode}={level:g}: {', '.join(variants)} for {seconds:g}s"
                      + (f" (look {look})" if args.until_decided else ""), flush=True)  # fmt: skip
                run_locust(load, level, seconds, prefix, seed + number + 100 * (look - 1), order, args.block_seconds)
                parts.append(Samples.read(Path(f"{prefix}_samples.json")))
                return Samples.joined(parts)

            def analyse(samples: Samples, nominal: float, level: float = level) -> list[stats.Comparison]:
                return level_comparisons(
                    design, level, samples, args.margin, nominal, args.analysis_block_seconds or None,
                    args.pairs_per_request, level if mode == "rate" else 0.0, args.tail_margin, args.error_margin,
                    seed,
                )  # fmt: skip

            before = scrape(client)
            if args.until_decided:
                chunk = args.duration if design == "interleaved" else rounds * args.block_seconds
                looks = max(1, math.ceil(args.max_duration / chunk - 1e-9))
                found = sequential.until_decided(
                    lambda look, nominal: analyse(measure(look), nominal), looks, alpha, args.spending
                )
            else:
                found = analyse(measure(1), alpha)
            samples = Samples.joined(parts)
            after = scrape(client)
            outcome.samples[level] = samples
            for result in variant_results(load, level, design, samples, before, after):
                result.metadata = {key: metadata[result.variant].get(key) for key in REPORTED_METADATA}
                result.run = run + 1
                outcome.results.append(result)
            outcome.comparisons += found
    outcome.results.sort(key=lambda result: (variants.index(result.variant), result.offered))
    return outcome


def replicated(args: argparse.Namespace) -> Outcome:
    """``--repeats N`` runs (one without it): the service started afresh from --catalogue for every run (its
    processes restarted, so each run draws the variants' own state anew), or N runs against --url without
    restart. With N > 1 the verdicts rest on the run-level differences (loadtests.repeats)."""
    found: list[Outcome] = []
    for run in range(args.repeats):
        if args.repeats > 1:
            print(f"run {run + 1} of {args.repeats}" + (" (no restart: --url)" if args.url else ""), flush=True)
        if args.url:
            found.append(compare(args, args.url.rstrip("/"), run))
        else:
            log = args.out / ("server.log" if args.repeats == 1 else f"server-{run + 1}.log")
            with local_server(args.catalogue, log) as server:
                found.append(compare(args, server.base_url, run))
    if len(found) == 1:
        return found[0]
    runs = [outcome.comparisons for outcome in found]
    return Outcome(
        results=[result for outcome in found for result in outcome.results],
        comparisons=repeats.combine(runs, found[0].alpha, restarted=not args.url),
        samples=found[-1].samples,
        alpha=found[0].alpha,
        runs=runs,
    )


def served_variants(client: httpx.Client, url: str, wanted: str) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The variants to compare (``wanted``, or every ready one) and the service's metadata about each."""
    listing = client.get("/variants")
    if listing.status_code in (401, 403):
        raise SystemExit(f"{url} refused the API key ({listing.status_code}): pass --api-key or XNLI_SERVE_API_KEY")
    listing.raise_for_status()
    metadata = {entry["name"]: entry for entry in listing.json()["variants"] if entry["status"] == "ready"}
    variants = [name.strip() for name in wanted.split(",") if name.strip()] if wanted else list(metadata)
    unknown = [name for name in variants if name not in metadata]
    if unknown:
        raise SystemExit(f"variants not served at {url}: {unknown}")
    return variants, metadata


def compare_slo(args: argparse.Namespace, url: str) -> slo_run.SloOutcome:
    """``--mode slo``: each variant's capacity at the SLO, its interval, verdicts per pair, fleet and cost."""
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    terms = [slo.parse_term(text) for text in args.slo]
    with httpx.Client(base_url=url, timeout=10, headers=headers) as client:
        variants, _ = served_variants(client, url, args.variants)
        return _search_slo(args, client, url, variants, terms)


def _search_slo(
    args: argparse.Namespace, client: httpx.Client, url: str, variants: list[str], terms: list[slo.SloTerm]
) -> slo_run.SloOutcome:
    load = LoadSettings(
        url, variants, "rate", args.pairs_per_request, args.xnli_dir, args.languages, args.api_key, args.request_timeout
    )
    raw = args.out / "locust"
    raw.mkdir(parents=True, exist_ok=True)
    if args.warmup > 0:
        run_locust(load, max(1.0, args.start_rate), args.warmup, raw / "warmup", args.seed)
    pairs = len(variants) * (len(variants) - 1) // 2
    alpha = (1 - args.confidence) / max(1, pairs * len(slo.PAIR_METRICS))
    rounds = args.rounds or slo_run.DEFAULT_ROUNDS

    def run(prefix: Path, seed: int, order: list[str], block_seconds: float, schedule: slo_run.OpenLoop,
            seconds: float) -> slo_run.StepLoad:  # fmt: skip
        """One step, with the generator's CPU per block and the service's own account of each variant."""
        before = scrape_or_none(client)
        trace: list[tuple[float, float]] = []
        cpu = run_locust(
            load, max(schedule.block_rates), seconds, prefix, seed, order, block_seconds, schedule, trace
        )  # fmt: skip
        after = scrape_or_none(client)
        service = {} if before is None or after is None else slo_run.service_loads(before, after, order, block_seconds)
        blocks = slo_run.block_cpu(
            trace, schedule.schedule_at, block_seconds, len(order), schedule.processes, schedule.gap_seconds
        )
        return slo_run.StepLoad(cpu, blocks, service)

    searches, steps, cpu = slo_run.run_search(
        run, variants, terms, raw, start_rate=args.start_rate, steps=args.slo_steps, rounds=rounds,
        block_seconds=args.block_seconds, processes=args.processes, seed=args.seed, alpha=alpha,
        timeout_s=args.request_timeout, gap_seconds=args.block_gap,
    )  # fmt: skip
    found = slo_run.capacities(
        searches, ", ".join(term.text for term in terms), args.pairs_per_request, args.price_per_hour, args.peak_rps,
        args.utilisation, args.hardware,
    )  # fmt: skip
    comparisons = slo_run.pair_comparisons(found, steps, rounds, args.margin, alpha, args.seed)
    points = {variant: search.points for variant, search in searches.items()}
    return slo_run.SloOutcome(terms, found, comparisons, points, cpu)


def scrape_or_none(client: httpx.Client) -> MetricSamples | None:
    """The service's metrics now, or None when it does not expose them (SLO mode then reads X-Queue-Time)."""
    try:
        return scrape(client)
    except (httpx.HTTPError, ValueError):
        return None


REPORTED_METADATA = (
    "intermediate_task", "base_model", "dtype", "backend", "quantization", "device", "parameters", "untrained",
)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="A running xnli-serve; default: start one from --catalogue on a free port")
    parser.add_argument("--catalogue", type=Path, default=DEFAULT_CATALOGUE)
    parser.add_argument("--variants", default="", help="Comma-separated (default: every ready variant)")
    parser.add_argument(
        "--mode",
        choices=("interleaved", "capacity", "slo"),
        default="interleaved",
        help="interleaved: all variants in one window (latency); capacity: each alone in alternating blocks; slo: "
        "each variant's highest Poisson arrival rate that meets --slo",
    )
    parser.add_argument(
        "--slo", action="append", default=[], help="SLO mode: a term, e.g. 'p99<=250ms' or 'errors<=0.1%%' (repeat)"
    )
    parser.add_argument("--start-rate", type=float, default=10.0, help="SLO mode: first rate tried, requests/s")
    parser.add_argument("--slo-steps", type=int, default=6, help="SLO mode: search steps before the confirmation")
    parser.add_argument("--peak-rps", type=float, default=0.0, help="SLO mode: peak pairs/s the fleet must carry")
    parser.add_argument("--utilisation", type=float, default=0.7, help="SLO mode: target share of capacity used")
    parser.add_argument("--price-per-hour", type=float, default=0.0, help="SLO mode: price of one replica per hour")
    parser.add_argument("--hardware", default="", help="SLO mode: what one replica runs on, for the cost table")
    parser.add_argument(
        "--processes", type=int, default=1, help="SLO mode: Locust worker processes (a fast variant may need several)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="Run the comparison N times, the service restarted in between (with --url: without restart); N > 1: "
        "verdicts from the run-level differences, with within- and between-run variance",
    )
    parser.add_argument(
        "--until-decided",
        action="store_true",
        help="Measure each level in chunks of --duration (capacity: --rounds) and stop once every verdict is decided "
        "(alpha spent over the looks), at most --max-duration",
    )
    parser.add_argument("--max-duration", type=float, default=0.0, help="--until-decided: most seconds per level")
    parser.add_argument(
        "--spending",
        choices=sequential.SPENDING,
        default="obrien-fleming",
        help="--until-decided: Lan-DeMets alpha-spending function over the looks",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="Print the duration (or repeats) each verdict needs for its detectable effect to reach --margin, from "
        "--pilot or from this run as the pilot",
    )
    parser.add_argument("--pilot", type=Path, default=None, help="--plan: a pilot's results.json (or its folder)")
    parser.add_argument("--users", default="1,8,32", help="Closed-loop user counts (the load levels)")
    parser.add_argument("--rates", default="", help="Fixed arrival rates in requests/s instead of --users")
    parser.add_argument("--duration", type=float, default=20.0, help="Seconds measured per level (interleaved)")
    parser.add_argument("--warmup", type=float, default=3.0, help="Seconds of discarded load (all variants)")
    parser.add_argument("--block-seconds", type=float, default=2.0, help="Capacity: length of one variant's block")
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help=f"Capacity: rounds of blocks (default: >= {CAPACITY_MIN_ROUNDS}, a multiple of the variants)",
    )
    parser.add_argument(
        "--analysis-block-seconds",
        type=float,
        default=0.0,
        help="Interleaved: length of the time blocks the window is cut into (default: from the data, up to "
        f"{stats.MAX_BLOCKS} blocks "
        f"of about {stats.TARGET_PER_BLOCK} requests per variant)",
    )
    parser.add_argument("--margin", type=float, default=0.05, help="Equivalence margin, share of a's level")
    parser.add_argument(
        "--tail-margin",
        type=float,
        default=analysis.DEFAULT_TAIL_MARGIN,
        help="Tail verdicts: equivalence margin on the share above the threshold, as a share of the nominal tail "
        "(0.5: p99 within p98.5..p99.5)",
    )
    parser.add_argument(
        "--error-margin",
        type=float,
        default=analysis.DEFAULT_ERROR_MARGIN,
        help="Error-rate verdicts: equivalence margin, an absolute share of requests",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=None,
        help="Seconds before a request counts as timed out (and every unanswered request as lasting this long); "
        f"default {outcomes.DEFAULT_TIMEOUT_S:g}, in SLO mode {slo.TIMEOUT_PER_LIMIT:g} x the SLO's longest latency "
        f"limit, at least {slo.MIN_TIMEOUT_S:g} s",
    )
    parser.add_argument(
        "--block-gap",
        type=float,
        default=None,
        help="SLO mode: quiet seconds after each block, so that its requests are answered or time out before the "
        "next variant's block (default: the request timeout)",
    )
    parser.add_argument("--confidence", type=float, default=0.95, help="For the whole report (Bonferroni-shared)")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the users' variant shuffles")
    parser.add_argument("--pairs-per-request", type=int, default=1)
    parser.add_argument(
        "--xnli-dir", default=None, help="XNLI data (folder or file) for payloads (default: the sample)"
    )
    parser.add_argument("--languages", default=None)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("XNLI_SERVE_API_KEY", ""),
        help="Bearer key for a service that requires one (default: $XNLI_SERVE_API_KEY)",
    )
    parser.add_argument("--out", type=Path, default=Path("reports") / time.strftime("compare-%Y%m%d-%H%M%S"))
    args = parser.parse_args(argv)
    if args.mode == "capacity" and args.rounds and args.rounds < 3:
        parser.error("--rounds must be at least 3")
    if not 0 < args.margin < 1 or not 0.5 < args.confidence < 1:
        parser.error("--margin must be in (0, 1) and --confidence in (0.5, 1)")
    if (args.request_timeout is not None and args.request_timeout <= 0) or (args.block_gap or 0) < 0:
        parser.error("--request-timeout must be positive and --block-gap not negative")
    if args.mode != "slo" and args.block_gap is not None:
        parser.error("--block-gap applies to the SLO mode")
    if args.block_seconds <= 0 or args.duration <= 0 or args.analysis_block_seconds < 0:
        parser.error("--block-seconds and --duration must be positive, --analysis-block-seconds not negative")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.until_decided and args.max_duration < (args.duration if args.mode == "interleaved" else 0):
        parser.error("--until-decided needs --max-duration of at least --duration")
    if args.mode == "slo" and (args.repeats > 1 or args.until_decided or args.plan):
        parser.error("--repeats, --until-decided and --plan apply to the interleaved and capacity modes")
    if args.pilot and not args.plan:
        parser.error("--pilot goes with --plan")
    if args.mode == "slo":
        try:
            terms = [slo.parse_term(text) for text in args.slo or ["?"]]
        except ValueError as error:
            parser.error(f"--slo: {error}" if args.slo else "--mode slo needs at least one --slo term")
        if args.request_timeout is None:
            args.request_timeout = slo.client_timeout(terms)
        if args.block_gap is None:
            args.block_gap = args.request_timeout
        if args.start_rate <= 0 or args.slo_steps < 1 or args.processes < 1 or not 0 < args.utilisation <= 1:
            parser.error(
                "--start-rate must be positive, --slo-steps and --processes at least 1, --utilisation in (0, 1]"
            )
    if args.request_timeout is None:
        args.request_timeout = outcomes.DEFAULT_TIMEOUT_S
    args.out.mkdir(parents=True, exist_ok=True)
    parameters = {key: value for key, value in vars(args).items() if key != "api_key"}
    if args.mode == "slo":
        if args.url:
            found = compare_slo(args, args.url.rstrip("/"))
        else:
            with local_server(args.catalogue, args.out / "server.log") as server:
                found = compare_slo(args, server.base_url)
        slo_run.write(found, args.out, parameters)
        print(f"report: {args.out / 'report.md'}")
        for line in slo_run.sentences(found, args.price_per_hour, args.peak_rps, args.utilisation):
            print(f"  {line}")
        return
    if args.pilot:
        print_plan(args, *pilot(args.pilot))
        return
    outcome = replicated(args)
    extra = {"runs": [[asdict(c) for c in run] for run in outcome.runs]} if outcome.runs else {}
    report.write_results(outcome.results, outcome.comparisons, args.out, parameters, extra)
    report.write_report(outcome.results, outcome.comparisons, outcome.samples, args.out, parameters)
    print(f"report: {args.out / 'report.md'}")
    for line in report.verdict_lines(outcome.comparisons, unit_of(outcome.results)):
        print(f"  {line}")
    if args.plan:
        print_plan(args, outcome.comparisons, args.duration, args.rounds)


def pilot(path: Path) -> tuple[list[stats.Comparison], float, int]:
    """A pilot's verdicts, its seconds per level (or per look) and its rounds, from its results.json."""
    file = path / "results.json" if path.is_dir() else path
    if not file.exists():
        raise SystemExit(f"--pilot: no results.json at {path}")
    document = json.loads(file.read_text(encoding="utf-8"))
    parameters = document.get("parameters", {})
    found = [repeats.comparison_from(row) for row in document.get("comparisons", []) if row.get("metric") != "capacity"]
    if not found:
        raise SystemExit(f"--pilot: {file} has no verdicts to plan from")
    return found, float(parameters.get("duration") or 20.0), int(parameters.get("rounds") or 0)


def print_plan(args: argparse.Namespace, found: list[stats.Comparison], duration: float, rounds: int) -> None:
    """The plan (loadtests.repeats.plan) on stdout and in plan.md beside the report."""
    lines = repeats.plan_lines(repeats.plan(found, duration, rounds, args.margin), duration, rounds)
    heading = f"Plan for a margin of {args.margin:.1%} (median, throughput; tails and errors: their own margins):"
    print(heading)
    for line in lines:
        print(f"  {line}")
    (args.out / "plan.md").write_text("\n".join([f"# {heading}", "", *[f"- {line}" for line in lines]]) + "\n")


if __name__ == "__main__":
    main()
