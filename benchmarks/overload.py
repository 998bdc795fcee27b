"""Overload with single-pair requests, the HTTP-bound case: what the service does at a multiple of its capacity.

    python -m benchmarks.overload --catalogue /tmp/store/variants.toml --variant xlmr-mnli --factor 3

First the capacity: a closed loop of single-pair /predict requests (benchmarks.frontend's asyncio-stream client,
``--concurrency`` keep-alive connections) for ``--seconds``. Then an open loop at ``--factor`` x that rate for the
same time: requests are sent on schedule (Poisson arrivals, seeded) over a pool of connections, whether or not
earlier ones were answered, from ``--client-processes`` processes. Every request ends as 200, a refusal with its
status (429 with Retry-After, 503), or lost (a transport error after it was sent; none may be). Prints goodput as a
share of capacity, the refused share, latency percentiles of the accepted requests, and what was lost; JSON (--out).
"""

from __future__ import annotations

import asyncio
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from app.local_server import local_server
from benchmarks.common import argument_parser, machine, percentiles, print_machine, write_json
from benchmarks.frontend import Share, closed_loop
from loadtests.scrape import scrape

PAIR = {"premise": "The ferry left the harbour at dawn.", "hypothesis": "A boat departed early in the morning."}


@dataclass(frozen=True)
class Schedule:
    host: str
    port: int
    body: bytes
    rate: float  # this process's share of the offered rate
    seconds: float
    connections: int
    seed: int


async def _open_loop(schedule: Schedule) -> dict[str, Any]:
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {schedule.host}:{schedule.port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(schedule.body)}\r\n\r\n"
    ).encode("ascii")
    request = head + schedule.body
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    outcomes: dict[str, int] = {}
    latencies: list[float] = []
    late = 0  # requests sent more than 10 ms after their scheduled time: the client could not keep up

    async def connection() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if not idle.empty():
            return idle.get_nowait()
        return await asyncio.open_connection(schedule.host, schedule.port)

    async def one() -> None:
        began = time.perf_counter()
        try:
            reader, writer = await connection()
        except OSError:
            outcomes["refused_connection"] = outcomes.get("refused_connection", 0) + 1
            return
        try:
            writer.write(request)
            answer = await reader.readuntil(b"\r\n\r\n")
            status = answer[9:12].decode()
            length = next(
                (int(line[15:]) for line in answer.split(b"\r\n") if line[:15].lower() == b"content-length:"), 0
            )
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
            outcomes[f"lost:{type(error).__name__}"] = outcomes.get(f"lost:{type(error).__name__}", 0) + 1
            writer.close()
            return
        outcomes[status] = outcomes.get(status, 0) + 1
        if status == "200":
            latencies.append(time.perf_counter() - began)
        if b"connection: close" in answer.lower():
            writer.close()
        else:
            idle.put_nowait((reader, writer))

    generator = random.Random(schedule.seed)
    tasks = []
    started = time.perf_counter()
    at = 0.0
    while at < schedule.seconds:
        delay = started + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.01:
            late += 1
        tasks.append(asyncio.ensure_future(one()))
        at += generator.expovariate(schedule.rate)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    while not idle.empty():
        idle.get_nowait()[1].close()
    return {"sent": len(tasks), "outcomes": outcomes, "latencies": latencies, "late": late, "elapsed": elapsed}


def _run(schedule: Schedule) -> dict[str, Any]:
    import uvloop

    return uvloop.run(_open_loop(schedule))


def main() -> None:
    parser = argument_parser("benchmarks.overload", __doc__, pairs=0)
    parser.add_argument("--variant", default="xlmr-mnli")
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--client-processes", type=int, default=1)
    args = parser.parse_args()
    info = machine()
    print_machine(info)
    body = orjson.dumps({**PAIR, "variant": args.variant})
    env = {"XNLI_SERVE_VARIANTS": args.variant}
    with (
        local_server(args.catalogue, Path("/tmp/benchmark-overload.log"), env) as server,
        ProcessPoolExecutor(args.client_processes) as pool,
    ):
        host, port_text = server.base_url.removeprefix("http://").rsplit(":", 1)
        port = int(port_text)
        closed_loop(pool, args.client_processes, Share(host, port, [body], args.concurrency, 2.0, 0))  # warm-up
        capacity = closed_loop(
            pool, args.client_processes, Share(host, port, [body], args.concurrency, args.seconds, 0)
        )
        rate = capacity["requests_per_s"] * args.factor
        print(
            f"capacity: {capacity['requests_per_s']:.1f} req/s (p99 {capacity['p99_ms']:.1f} ms); offering {rate:.0f}"
        )
        schedules = [
            Schedule(host, port, body, rate / args.client_processes, args.seconds, args.concurrency, seed)
            for seed in range(args.client_processes)
        ]
        parts = list(pool.map(_run, schedules))
        closes = {
            dict(labels)["reason"]: value
            for (name, labels), value in scrape(server.base_url).items()
            if name == "xnli_http_connections_closed_total"
        }
    outcomes: dict[str, int] = {}
    for part in parts:
        for key, count in part["outcomes"].items():
            outcomes[key] = outcomes.get(key, 0) + count
    sent = sum(part["sent"] for part in parts)
    elapsed = max(part["elapsed"] for part in parts)
    latencies = [latency for part in parts for latency in part["latencies"]]
    lost = sum(count for key, count in outcomes.items() if key.startswith("lost:"))
    result = {
        "capacity_req_s": capacity["requests_per_s"],
        "offered_req_s": rate,
        "sent_req_s": sent / args.seconds,
        "late_sends": sum(part["late"] for part in parts),
        "goodput_req_s": outcomes.get("200", 0) / elapsed,
        "goodput_share_of_capacity": outcomes.get("200", 0) / elapsed / capacity["requests_per_s"],
        "refused_share": outcomes.get("429", 0) / sent,
        "outcomes": outcomes,
        "lost": lost,
        "accepted": percentiles(latencies) if latencies else {},
        "connections_closed_by_the_edge": closes,
    }
    for key, value in result.items():
        print(f"{key}: {value}")
    write_json(args.out, {"machine": info, "result": result, "config": {k: str(v) for k, v in vars(args).items()}})


if __name__ == "__main__":
    main()
