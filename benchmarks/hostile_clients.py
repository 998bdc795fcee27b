"""The service against clients without a key that misbehave (issue #24's audit), measured on a real server.

    python -m benchmarks.hostile_clients --catalogue model_store/variants.toml --variant xlmr-mnli

Scenarios (``--only`` picks some), each on a fresh ``xnli-serve serve`` on loopback with default settings:

* ``slow-connections``: 600 silent connections, 200 sending one header line every 5 s, 200 stalled mid-body; how many
  the server closed within the header timeout + 2 s, and real requests' latency before and during the attack;
* ``descriptor-limit``: the server's descriptor limit at 1,100 and 1,300 idle connections; what 20 real requests get;
* ``huge-headers``: 4 connections each sending 100 MB of an unterminated header value; server memory before, at its
  peak and after;
* ``huge-texts``: 16 concurrent /v2 requests with a 1 MB premise, then 16 with the longest premise accepted
  (100,000 characters) as sentences, as one sentence padded with spaces, and in a script without spaces (the last
  two are read whole): wall time, statuses, server memory growth.

Prints one block per scenario and writes JSON (--out).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from app import local_server
from app.local_server import LocalServer
from benchmarks.common import argument_parser, machine, print_machine, resident_mb, write_json

JSON = {"content-type": "application/json"}
PAIR = b'{"premise": "The ferry left the harbour at dawn.", "hypothesis": "A boat departed early."}'


def address(server: LocalServer) -> tuple[str, int]:
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def latency_ms(server: LocalServer, variant: str) -> float:
    began = time.perf_counter()
    body = PAIR[:-1] + f', "variant": "{variant}"}}'.encode()
    status = httpx.post(f"{server.base_url}/predict", content=body, headers=JSON, timeout=30).status_code
    if status != 200:
        raise RuntimeError(f"a real request got {status}")
    return (time.perf_counter() - began) * 1000


def slow_connections(server: LocalServer, variant: str) -> dict[str, Any]:
    before = [latency_ms(server, variant) for _ in range(20)]
    started = time.monotonic()
    silent = [socket.create_connection(address(server)) for _ in range(600)]
    dripping = [socket.create_connection(address(server)) for _ in range(200)]
    stalled = [socket.create_connection(address(server)) for _ in range(200)]
    for sock in dripping:
        sock.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\n")
    for sock in stalled:
        sock.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 64\r\n\r\n{")
    stop = threading.Event()

    def drip() -> None:
        while not stop.wait(5.0):
            for sock in dripping:
                with contextlib.suppress(OSError):
                    sock.sendall(b"x-drip: 1\r\n")

    threading.Thread(target=drip, daemon=True).start()
    during = [latency_ms(server, variant) for _ in range(20)]
    closed_at: list[float | None] = []
    for sock in silent + dripping + stalled:
        closed_at.append(_closed_after(sock, started, 20.0))
    stop.set()
    for sock in silent + dripping + stalled:
        sock.close()
    closed = [seconds for seconds in closed_at if seconds is not None]
    return {
        "connections": len(closed_at),
        "closed_within_20s": len(closed),
        "closed_within_12s": sum(seconds <= 12.0 for seconds in closed),
        "last_closed_s": max(closed, default=None),
        "latency_ms_before_p50": statistics.median(before),
        "latency_ms_during_p50": statistics.median(during),
    }


def _closed_after(sock: socket.socket, started: float, limit_s: float) -> float | None:
    while (left := started + limit_s - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return time.monotonic() - started
        except TimeoutError:
            return None
        except OSError:
            return time.monotonic() - started
    return None


def descriptor_limit(server: LocalServer, variant: str) -> dict[str, Any]:
    idle: list[socket.socket] = []
    refused = 0
    for _ in range(1300):
        try:
            idle.append(socket.create_connection(address(server), timeout=2))
        except OSError:
            refused += 1
    time.sleep(1.5)  # the attack holds its connections (a connection younger than 1 s is never evicted)
    outcomes: Counter[str] = Counter()
    for _ in range(20):
        try:
            body = PAIR[:-1] + f', "variant": "{variant}"}}'.encode()
            outcomes[
                str(httpx.post(f"{server.base_url}/predict", content=body, headers=JSON, timeout=15).status_code)
            ] += 1
        except httpx.TransportError as error:
            outcomes[type(error).__name__] += 1
    for sock in idle:
        sock.close()
    return {"attacking_connections": len(idle), "attack_connects_failed": refused, "real_requests": dict(outcomes)}


def huge_headers(server: LocalServer, variant: str) -> dict[str, Any]:
    pid = server.process.pid
    before = resident_mb(pid)
    peak = before
    sent: list[int] = []

    def attack() -> None:
        total = 0
        chunk = b"a" * 65536
        with socket.create_connection(address(server)) as sock:
            sock.settimeout(10)
            try:
                sock.sendall(b"GET /health/live HTTP/1.1\r\nhost: x\r\nx-endless: ")
                while total < 100 << 20:
                    sock.sendall(chunk)
                    total += len(chunk)
            except OSError:
                pass
        sent.append(total)

    threads = [threading.Thread(target=attack) for _ in range(4)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        peak = max(peak, resident_mb(pid))
        time.sleep(0.05)
    time.sleep(1.0)
    return {"rss_mb_before": before, "rss_mb_peak": peak, "rss_mb_after": resident_mb(pid), "bytes_taken": sent}


# Premises of a given length: sentences with spaces (settled by a head the length of max_seq_len), spaces after one
# sentence (a head too short to prove its tokens: read whole), and a script written without spaces (no cut).
LAYOUTS: dict[str, Callable[[int], str]] = {
    "sentences": lambda chars: ("Der Fluss fließt ruhig durch das Tal. " * (chars // 38 + 1))[:chars],
    "space-padded": lambda chars: "Der Fluss fließt. " + " " * (chars - 18),
    "no-spaces": lambda chars: ("河流静静地流过山谷。" * (chars // 10 + 1))[:chars],
}


async def _texts(server: LocalServer, variant: str, chars: int, layout: str = "sentences") -> dict[str, Any]:
    premise = LAYOUTS[layout](chars)
    body = {
        "inputs": [
            {"name": "premise", "shape": [1], "datatype": "BYTES", "data": [premise]},
            {"name": "hypothesis", "shape": [1], "datatype": "BYTES", "data": ["Ein Fluss."]},
        ]
    }
    pid = server.process.pid
    before = resident_mb(pid)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as http:
        began = time.perf_counter()
        answers = await asyncio.gather(*(http.post(f"/v2/models/{variant}/infer", json=body) for _ in range(16)))
        wall = time.perf_counter() - began
    return {
        "premise_chars": chars,
        "layout": layout,
        "wall_s": wall,
        "statuses": dict(Counter(str(answer.status_code) for answer in answers)),
        "rss_mb_growth": resident_mb(pid) - before,
    }


def huge_texts(server: LocalServer, variant: str) -> dict[str, Any]:
    return {
        "one_megabyte": asyncio.run(_texts(server, variant, 1_000_000)),
        "longest_accepted": asyncio.run(_texts(server, variant, 100_000)),
        "longest_space_padded": asyncio.run(_texts(server, variant, 100_000, "space-padded")),
        "longest_without_spaces": asyncio.run(_texts(server, variant, 100_000, "no-spaces")),
    }


def limited_descriptors(limit: int) -> Callable[..., list[str]]:
    start = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit})); "
        "os.execv(sys.executable, [sys.executable, '-m', 'app', *sys.argv[1:]])"
    )

    def command(*args: str) -> list[str]:
        return [sys.executable, "-c", start, *args]

    return command


SCENARIOS: dict[str, Callable[[LocalServer, str], dict[str, Any]]] = {
    "slow-connections": slow_connections,
    "descriptor-limit": descriptor_limit,
    "huge-headers": huge_headers,
    "huge-texts": huge_texts,
}


def main() -> None:
    parser = argument_parser("benchmarks.hostile_clients", __doc__, pairs=0)
    parser.add_argument("--variant", default="xlmr-mnli")
    parser.add_argument("--only", nargs="*", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--logs", type=Path, default=Path("/tmp/hostile-clients"))
    args = parser.parse_args()
    info = machine()
    print_machine(info)
    results: dict[str, Any] = {"machine": info}
    default_command = local_server.server_command
    for name in args.only:
        local_server.server_command = limited_descriptors(1100) if name == "descriptor-limit" else default_command
        env = {"XNLI_SERVE_VARIANTS": args.variant, "XNLI_SERVE_TORCH_THREADS": "1"}
        with local_server.local_server(args.catalogue, args.logs / f"{name}.log", env) as server:
            results[name] = SCENARIOS[name](server, args.variant)
        print(f"{name}: {results[name]}", flush=True)
    if args.out:
        write_json(args.out, results)


if __name__ == "__main__":
    main()
