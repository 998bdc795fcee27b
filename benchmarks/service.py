"""The service against its own limit, measured in the same run on the same pairs.

    python -m benchmarks.service --catalogue /tmp/store-base/variants.toml --variant xlmr-mnli \
        --fair-variant xlmr-squad-mnli --out benchmarks/results/cpu-base.json

Runs, in order: the engine limit in-process (benchmarks.engine); then a real `xnli-serve serve` on loopback driven by
an asynchronous HTTP client: closed loop at increasing concurrency with single-pair and 16-pair requests, open loop at
fixed arrival rates, the HTTP floor (GET /health/live on the same app stack), and, with --fair-variant, two variants
on one device under equal load. Prints every figure with its ratio to the engine limit and writes JSON.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from app.local_server import local_server
from benchmarks.common import argument_parser, machine, mixed_pairs, percentiles, print_machine, resident_mb, write_json
from benchmarks.engine import measure_engine
from loadtests.scrape import delta, scrape


@dataclass(frozen=True)
class ClosedLoop:
    """``concurrency`` clients, each sending its next request as soon as the last is answered, for ``seconds``;
    client ``i`` asks for ``variants[i % len(variants)]`` (``first_client`` numbers a share run in another process)."""

    url: str
    pairs: list[tuple[str, str]]
    variants: list[str]
    concurrency: int
    pairs_per_request: int
    seconds: float
    first_client: int = 0


async def closed_loop_raw(loop: ClosedLoop) -> dict[str, Any]:
    """Run the closed loop in this process; raw latencies."""
    pairs, variants, pairs_per_request = loop.pairs, loop.variants, loop.pairs_per_request
    latencies: list[float] = []
    per_variant = dict.fromkeys(variants, 0)
    errors = 0
    stop = time.perf_counter() + loop.seconds

    async def client(index: int, http: httpx.AsyncClient) -> None:
        nonlocal errors
        position = index * 97
        variant = variants[index % len(variants)]
        while time.perf_counter() < stop:
            chunk = [pairs[(position + k) % len(pairs)] for k in range(pairs_per_request)]
            position += pairs_per_request
            body: dict[str, Any] = {"variant": variant}
            if pairs_per_request == 1:
                body.update(premise=chunk[0][0], hypothesis=chunk[0][1])
            else:
                body["inputs"] = [{"premise": p, "hypothesis": h} for p, h in chunk]
            began = time.perf_counter()
            try:
                response = await http.post("/predict", json=body)
            except httpx.TransportError:  # e.g. a keep-alive connection the server closed while we backed off
                errors += 1
                continue
            if response.status_code == 200:
                latencies.append(time.perf_counter() - began)
                per_variant[variant] += pairs_per_request
            else:
                errors += 1
                if response.status_code == 429:  # a well-behaved client backs off as told
                    await asyncio.sleep(min(float(response.headers.get("retry-after", "1")), 5.0))

    limits = httpx.Limits(max_connections=loop.concurrency, max_keepalive_connections=loop.concurrency)
    async with httpx.AsyncClient(base_url=loop.url, timeout=120, limits=limits) as http:
        started = time.perf_counter()
        clients = range(loop.first_client, loop.first_client + loop.concurrency)
        await asyncio.gather(*(client(index, http) for index in clients))
        elapsed = time.perf_counter() - started
    return {"latencies": latencies, "per_variant": per_variant, "errors": errors, "elapsed": elapsed}


def _closed_loop_process(loop: ClosedLoop) -> dict[str, Any]:
    return asyncio.run(closed_loop_raw(loop))


def closed_loop_summary(parts: list[dict[str, Any]], loop: ClosedLoop) -> dict[str, Any]:
    concurrency, pairs_per_request, variants = loop.concurrency, loop.pairs_per_request, loop.variants
    latencies = [latency for part in parts for latency in part["latencies"]]
    elapsed = max(part["elapsed"] for part in parts)
    per_variant = {name: sum(part["per_variant"][name] for part in parts) for name in variants}
    return {
        "concurrency": concurrency,
        "pairs_per_request": pairs_per_request,
        "client_processes": len(parts),
        "requests_per_s": len(latencies) / elapsed,
        "pairs_per_s": len(latencies) * pairs_per_request / elapsed,
        "errors": sum(part["errors"] for part in parts),
        "per_variant_pairs_per_s": {name: count / elapsed for name, count in per_variant.items()},
        **(percentiles(latencies) if latencies else {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0}),
    }


def closed_loop_in_processes(pool: ProcessPoolExecutor | None, processes: int, loop: ClosedLoop) -> dict[str, Any]:
    """The closed loop with its clients spread over the pool's processes: one asyncio client process tops out
    at a few thousand requests per second, below what a GPU engine answers."""
    concurrency = loop.concurrency
    processes = min(processes, concurrency)
    if pool is None or processes <= 1:
        return closed_loop_summary([asyncio.run(closed_loop_raw(loop))], loop)
    shares = [concurrency // processes + (index < concurrency % processes) for index in range(processes)]
    firsts = [sum(shares[:index]) for index in range(processes)]
    jobs = [replace(loop, concurrency=share, first_client=first) for share, first in zip(shares, firsts, strict=True)]
    return closed_loop_summary(list(pool.map(_closed_loop_process, jobs)), loop)


async def open_loop(
    url: str, pairs: list[tuple[str, str]], variant: str, rate: float, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: list[int] = []

    async def one(http: httpx.AsyncClient, pair: tuple[str, str]) -> None:
        began = time.perf_counter()
        response = await http.post("/predict", json={"premise": pair[0], "hypothesis": pair[1], "variant": variant})
        statuses.append(response.status_code)
        if response.status_code == 200:
            latencies.append(time.perf_counter() - began)

    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        tasks = []
        started = time.perf_counter()
        for index in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, started + index / rate - time.perf_counter()))
            tasks.append(asyncio.ensure_future(one(http, pairs[index % len(pairs)])))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    return {
        "offered_per_s": rate,
        "achieved_per_s": len(latencies) / elapsed,
        "refused": sum(status == 429 for status in statuses),
        **(percentiles(latencies) if latencies else {}),
    }


async def http_floor(url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop:
            began = time.perf_counter()
            await http.get("/health/live")
            latencies.append(time.perf_counter() - began)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"concurrency": concurrency, "requests_per_s": len(latencies) / elapsed, **percentiles(latencies)}


def show(label: str, row: dict[str, Any], limit: float | None = None) -> None:
    ratio = f", {row['pairs_per_s'] / limit:.0%} of the engine limit" if limit and "pairs_per_s" in row else ""
    numbers = ", ".join(
        f"{key} {value:.2f}" if isinstance(value, float) else f"{key} {value}"
        for key, value in row.items()
        if key != "per_variant_pairs_per_s"
    )
    print(f"{label}: {numbers}{ratio}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser("benchmarks.service", __doc__, pairs=256)
    parser.add_argument("--variant", default="xlmr-mnli")
    parser.add_argument(
        "--fair-variant", default=None, help="A second variant on the same device, for the fair-share run"
    )
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument(
        "--batched-concurrency", default=None, help="Concurrency for 16-pair requests (default: --concurrency)"
    )
    parser.add_argument("--rates", default="", help="Open-loop arrival rates (requests/s), e.g. 5,10")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup-seconds", type=float, default=3.0)
    parser.add_argument("--floor-seconds", type=float, default=None, help="HTTP floor per step (0 skips; default 10)")
    parser.add_argument("--client-processes", type=int, default=1, help="Spread closed-loop clients over processes")
    parser.add_argument("--engine-batch-sizes", default="1,2,4,8,16,32,64")
    parser.add_argument("--engine-seconds-per-batch-size", type=float, default=None, help="Engine time budget")
    parser.add_argument("--skip-engine", action="store_true")
    args = parser.parse_args(argv)

    info = machine()
    print_machine(info)
    pairs = mixed_pairs(args.data, args.pairs)
    report: dict[str, Any] = {"machine": info, "variant": args.variant}
    limit = None
    if not args.skip_engine:
        engine = measure_engine(
            args.catalogue,
            args.variant,
            pairs,
            [int(b) for b in args.engine_batch_sizes.split(",")],
            seconds_per_batch_size=args.engine_seconds_per_batch_size,
        )
        report["engine"] = engine
        limit = engine["best"]["pairs_per_s"]
        gc.collect()

    variants = [args.variant] + ([args.fair_variant] if args.fair_variant else [])
    env = {"XNLI_SERVE_VARIANTS": ",".join(variants), "XNLI_SERVE_LOG_LEVEL": "warning"}
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "xnli-bench-server.log"
    pool = None
    if args.client_processes > 1:  # started before the server, so its start-up costs nothing measured
        pool = ProcessPoolExecutor(args.client_processes, mp_context=multiprocessing.get_context("spawn"))
    single = [int(c) for c in args.concurrency.split(",")]
    batched = [int(c) for c in (args.batched_concurrency or args.concurrency).split(",")]
    try:
        with local_server(args.catalogue, log, env) as running:
            url = running.base_url
            report["server_rss_mb_after_load"] = round(resident_mb(running.process.pid), 1)
            print(f"server resident memory after load: {report['server_rss_mb_after_load']:.0f} MB", flush=True)

            def run_closed(clients: list[str], concurrency: int, pairs_per_request: int, seconds: float) -> Any:
                loop = ClosedLoop(url, pairs, clients, concurrency, pairs_per_request, seconds)
                return closed_loop_in_processes(pool, args.client_processes, loop)

            if args.warmup_seconds > 0:  # discarded
                run_closed([args.variant], max(4, args.client_processes), 1, args.warmup_seconds)
            closed = []
            for pairs_per_request, levels in ((1, single), (16, batched)):
                for concurrency in levels:
                    before = scrape(url)
                    row = run_closed([args.variant], concurrency, pairs_per_request, args.seconds)
                    after = scrape(url)
                    padded = delta(before, after, "xnli_computed_tokens_total", variant=args.variant)
                    padding = delta(before, after, "xnli_computed_tokens_total", variant=args.variant, kind="padding")
                    batches = delta(before, after, "xnli_batch_size_count", variant=args.variant)
                    row["padding_share"] = padding / padded if padded else 0.0
                    row["mean_batch_size"] = (
                        delta(before, after, "xnli_batch_size_sum", variant=args.variant) / batches if batches else 0.0
                    )
                    if limit:
                        row["ratio_to_engine"] = row["pairs_per_s"] / limit
                    closed.append(row)
                    show(f"service closed loop x{pairs_per_request} c={concurrency}", row, limit)
            report["closed_loop"] = closed
            report["open_loop"] = []
            for rate in [float(r) for r in args.rates.split(",") if r]:
                row = asyncio.run(open_loop(url, pairs, args.variant, rate, args.seconds))
                report["open_loop"].append(row)
                show(f"service open loop {rate:g}/s", row)
            floor_seconds = min(args.seconds, 10.0) if args.floor_seconds is None else args.floor_seconds
            floor = []
            if floor_seconds > 0:
                floor = [asyncio.run(http_floor(url, concurrency, floor_seconds)) for concurrency in (1, 32)]
            report["http_floor"] = floor
            for row in floor:
                show(f"HTTP floor (GET /health/live) c={row['concurrency']}", row)
            if args.fair_variant:
                concurrency = max(single)
                row = run_closed(variants, concurrency, 1, args.seconds)
                total = sum(row["per_variant_pairs_per_s"].values())
                row["shares"] = (
                    {name: value / total for name, value in row["per_variant_pairs_per_s"].items()} if total else {}
                )
                report["fair_share"] = row
                print(f"fair share at c={concurrency}: {row['shares']}", flush=True)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    write_json(args.out, report)


if __name__ == "__main__":
    main()
