"""Single-pair requests per second through 1 and N HTTP front-end processes (XNLI_SERVE_FRONTEND_PROCESSES).

    python -m benchmarks.frontend --catalogue /tmp/store/variants.toml --variant xlmr-mnli --frontends 1,2

For each front-end count: a real `xnli-serve serve` on loopback, a warm-up, then a closed loop of single-pair
/predict requests from ``--client-processes`` processes holding ``--concurrency`` keep-alive connections in all. The
client speaks HTTP/1.1 on asyncio streams itself (a few times cheaper per request than httpx), so that on a machine
with many cores the client does not cap what is measured. Each row also checks the service counted every answered
request once (xnli_requests_total across the front ends). Prints one table row per count and writes JSON (--out).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from app.local_server import local_server
from benchmarks.common import argument_parser, machine, mixed_pairs, percentiles, print_machine, write_json
from loadtests.scrape import delta, scrape


@dataclass(frozen=True)
class Share:
    """One client process's part of the closed loop."""

    host: str
    port: int
    bodies: list[bytes]
    connections: int
    seconds: float
    first: int


def _request(host: str, port: int, body: bytes) -> bytes:
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


async def _closed_loop(share: Share) -> dict[str, Any]:
    requests = [_request(share.host, share.port, body) for body in share.bodies]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    transport_errors = 0
    stop = time.perf_counter() + share.seconds

    async def connection(index: int) -> None:
        nonlocal transport_errors
        position = index * 97
        while time.perf_counter() < stop:
            try:
                reader, writer = await asyncio.open_connection(share.host, share.port)
            except OSError:
                transport_errors += 1
                await asyncio.sleep(0.05)
                continue
            try:
                while time.perf_counter() < stop:
                    began = time.perf_counter()
                    writer.write(requests[position % len(requests)])
                    position += 1
                    head = await reader.readuntil(b"\r\n\r\n")
                    status = int(head[9:12])
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line[:15].lower() == b"content-length:":
                            length = int(line[15:])
                    await reader.readexactly(length)
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == 200:
                        latencies.append(time.perf_counter() - began)
                    if b"connection: close" in head.lower():
                        break
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                transport_errors += 1
            finally:
                writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection(share.first + index) for index in range(share.connections)))
    return {
        "latencies": latencies,
        "statuses": statuses,
        "transport_errors": transport_errors,
        "elapsed": time.perf_counter() - started,
    }


def _run_share(share: Share) -> dict[str, Any]:
    try:
        import uvloop

        return uvloop.run(_closed_loop(share))
    except ImportError:
        return asyncio.run(_closed_loop(share))


def closed_loop(pool: ProcessPoolExecutor, processes: int, share: Share) -> dict[str, Any]:
    """``share.connections`` connections in all, spread over ``processes`` client processes."""
    processes = max(1, min(processes, share.connections))
    counts = [share.connections // processes + (i < share.connections % processes) for i in range(processes)]
    shares = [
        Share(share.host, share.port, share.bodies, count, share.seconds, sum(counts[:index]))
        for index, count in enumerate(counts)
    ]
    parts = list(pool.map(_run_share, shares))
    latencies = [latency for part in parts for latency in part["latencies"]]
    statuses: dict[int, int] = {}
    for part in parts:
        for status, count in part["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    elapsed = max(part["elapsed"] for part in parts)
    return {
        "requests_per_s": len(latencies) / elapsed,
        "answered": sum(statuses.values()),
        "statuses": statuses,
        "transport_errors": sum(part["transport_errors"] for part in parts),
        **(percentiles(latencies) if latencies else {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0}),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser("benchmarks.frontend", __doc__, pairs=1024)
    parser.add_argument("--variant", default="xlmr-mnli")
    parser.add_argument("--frontends", default="1,2", help="Front-end process counts to compare, e.g. 1,8,16")
    parser.add_argument("--concurrency", type=int, default=32, help="Keep-alive connections in all")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup-seconds", type=float, default=2.0)
    args = parser.parse_args(argv)

    info = machine()
    print_machine(info)
    bodies = [
        orjson.dumps({"premise": premise, "hypothesis": hypothesis, "variant": args.variant})
        for premise, hypothesis in mixed_pairs(args.data, args.pairs)
    ]
    log_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    rows = []
    print(f"{'front ends':>10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-200':>8} {'conn err':>8} {'counted':>8}")
    with ProcessPoolExecutor(args.client_processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        for count in [int(value) for value in args.frontends.split(",")]:
            env = {
                "XNLI_SERVE_VARIANTS": args.variant,
                "XNLI_SERVE_LOG_LEVEL": "warning",
                "XNLI_SERVE_FRONTEND_PROCESSES": str(count),
            }
            with local_server(args.catalogue, log_dir / f"xnli-bench-frontend-{count}.log", env) as running:
                host, port = running.base_url.removeprefix("http://").rsplit(":", 1)
                if args.warmup_seconds > 0:
                    closed_loop(pool, args.client_processes, Share(host, int(port), bodies, 4, args.warmup_seconds, 0))
                before = scrape(running.base_url)
                share = Share(host, int(port), bodies, args.concurrency, args.seconds, 0)
                row: dict[str, Any] = {"frontends": count, "concurrency": args.concurrency, **closed_loop(
                    pool, args.client_processes, share
                )}  # fmt: skip
                after = scrape(running.base_url)
            row["counted"] = delta(before, after, "xnli_requests_total", variant=args.variant)
            rows.append(row)
            non_200 = row["answered"] - row["statuses"].get(200, 0)
            print(
                f"{count:>10} {row['requests_per_s']:>9.0f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} "
                f"{non_200:>8} {row['transport_errors']:>8} {row['counted'] == row['answered']!s:>8}",
                flush=True,
            )
    write_json(args.out, {"machine": info, "variant": args.variant, "rows": rows})


if __name__ == "__main__":
    main()
