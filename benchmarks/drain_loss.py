"""Requests lost when a service with several front ends stops under load: SIGTERM to the supervisor, or ``kill -9`` of
its engine process.

    python -m benchmarks.drain_loss --catalogue model_store/variants.toml --variant xlmr-mnli --runs 5

Each run starts a real ``xnli-serve serve`` (``XNLI_SERVE_FRONTEND_PROCESSES``, default 2) on loopback, puts it under
``--clients`` keep-alive clients (one connection each) sending single-pair /predict requests back to back, then stops
it. Every client goes on after a 503, a 429 or a reset (opening a new connection when the old one was closed) and stops
at its first refused connection: once the listening socket is closed. Each request ends as one of

* answered: 200, or another status with its error type (``503 draining``, ``503 not_ready``);
* refused: ``ConnectError``, the connection was never made, so nothing was taken;
* lost: anything else (``RemoteProtocolError``, ``ReadError``, ...): the request went out and no answer came back.

Prints one line per run (lost / sent) and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from app.local_server import LocalServer, local_server
from benchmarks.common import write_json

Scenario = Literal["sigterm", "kill-engine"]
SCENARIOS: tuple[Scenario, ...] = ("sigterm", "kill-engine")
REFUSED = "ConnectError"
PAIR = {"premise": "The ferry left the harbour at dawn.", "hypothesis": "A boat departed early in the morning."}


@dataclass(frozen=True)
class Sent:
    """One request: when it went out and when it ended (seconds from the stop), and how it ended."""

    sent_s: float
    ended_s: float
    outcome: str


@dataclass(frozen=True)
class RunResult:
    scenario: Scenario
    sent: list[Sent]
    exit_code: int | None

    @property
    def lost(self) -> list[Sent]:
        return [request for request in self.sent if not is_answer(request.outcome) and request.outcome != REFUSED]

    def counts(self) -> dict[str, int]:
        return dict(Counter(request.outcome for request in self.sent))

    def line(self) -> str:
        lost = self.lost
        timing = ""
        if lost:
            first, last = min(request.sent_s for request in lost), max(request.sent_s for request in lost)
            timing = f" (sent {first:+.2f}..{last:+.2f} s from the stop)"
        return f"{self.scenario}: lost {len(lost)} / sent {len(self.sent)}{timing}; {self.counts()}"


def is_answer(outcome: str) -> bool:
    """An HTTP answer: a status code, alone or with its error type."""
    return outcome[:3].isdigit()


def children(pid: int) -> dict[int, str]:
    """Child processes of ``pid`` and their command lines (Linux)."""
    found = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        found[int(child)] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return found


def engine_pid(server: LocalServer) -> int:
    (pid,) = [
        pid for pid, command in children(server.process.pid).items() if "app.multiprocess.engine_process" in command
    ]
    return pid


async def _client(base_url: str, body: dict[str, Any], sent: list[Sent], give_up: float) -> None:
    """Back-to-back requests on one keep-alive connection (a new one after a close) until a refused connection;
    times are absolute here (perf_counter)."""
    timeout = httpx.Timeout(30.0, connect=10.0)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as http:
        while time.perf_counter() < give_up:
            started = time.perf_counter()
            try:
                response = await http.post("/predict", json=body)
                outcome = str(response.status_code)
                if response.status_code != 200:
                    outcome = f"{outcome} {error_type(response)}"
            except httpx.TransportError as error:
                outcome = type(error).__name__
            sent.append(Sent(started, time.perf_counter(), outcome))
            if outcome == REFUSED:
                return


def error_type(response: httpx.Response) -> str:
    """The ``error.type`` of a native error body ("?" for anything else: still an answer)."""
    try:
        return str(response.json()["error"]["type"])
    except (ValueError, KeyError, TypeError):
        return "?"


def stopper(server: LocalServer, scenario: Scenario) -> Callable[[], None]:
    """What ends the service in ``scenario``: SIGTERM to the supervisor, or SIGKILL to its engine process."""
    if scenario == "sigterm":
        return lambda: server.process.send_signal(signal.SIGTERM)
    pid = engine_pid(server)
    return lambda: os.kill(pid, signal.SIGKILL)


async def load_then_stop(
    base_url: str, stop: Callable[[], object], variant: str, clients: int = 16, warm_s: float = 0.5
) -> list[Sent]:
    """``clients`` keep-alive clients until each has had answers for a while (``clients`` x 2 200s, then
    ``warm_s``), then ``stop()``; every request, timed from the stop, once all clients have ended."""
    body = {**PAIR, "variant": variant}
    sent: list[Sent] = []
    give_up = time.perf_counter() + 120.0
    tasks = [asyncio.ensure_future(_client(base_url, body, sent, give_up)) for _ in range(clients)]
    warm_until = time.perf_counter() + 60.0  # a loaded machine may take long for the first answers
    while sum(request.outcome == "200" for request in sent) < 2 * clients:
        if time.perf_counter() > warm_until:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(warm_s)
    stopped_at = time.perf_counter()
    stop()
    await asyncio.gather(*tasks)
    return [Sent(request.sent_s - stopped_at, request.ended_s - stopped_at, request.outcome) for request in sent]


def run_once(
    catalogue: Path,
    variant: str,
    scenario: Scenario,
    log_dir: Path,
    fronts: int = 2,
    clients: int = 16,
    extra_env: dict[str, str] | None = None,
) -> RunResult:
    """One server, one stop under load."""
    env = {"XNLI_SERVE_FRONTEND_PROCESSES": str(fronts), "XNLI_SERVE_TORCH_THREADS": "1", **(extra_env or {})}
    log_path = log_dir / f"drain-loss-{scenario}-{time.monotonic_ns()}.log"
    with local_server(catalogue, log_path, env) as server:
        sent = asyncio.run(load_then_stop(server.base_url, stopper(server, scenario), variant, clients))
        try:
            exit_code: int | None = server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:  # reported as None; the context manager kills it
            exit_code = None
    return RunResult(scenario, sent, exit_code)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalogue", type=Path, default=Path("model_store/variants.toml"))
    parser.add_argument("--variant", default="xlmr-mnli")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--fronts", type=int, default=2)
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/xnli-drain-loss"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    results: list[dict[str, Any]] = []
    scenarios = [scenario for scenario in SCENARIOS if scenario in args.scenarios.split(",")]
    if not scenarios:
        parser.error(f"--scenarios: one or more of {', '.join(SCENARIOS)}")
    for scenario in scenarios:
        for run in range(1, args.runs + 1):
            result = run_once(args.catalogue, args.variant, scenario, args.log_dir, args.fronts, args.clients)
            print(f"run {run}: {result.line()}; exit {result.exit_code}", flush=True)
            results.append(
                {
                    "scenario": scenario,
                    "run": run,
                    "sent": len(result.sent),
                    "lost": [asdict(request) for request in result.lost],
                    "counts": result.counts(),
                    "exit_code": result.exit_code,
                }
            )
    write_json(args.out, {"runs": results})


if __name__ == "__main__":
    main()
