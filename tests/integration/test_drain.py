"""SIGTERM under steady load: readiness flips first, accepted requests finish, the process exits 0."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from benchmarks import drain_loss
from tests.support.helpers import Outcome, predict_until_refused, running_server, write_catalogue

# Long end-to-end runs (SIGTERM drains under steady clients): make test-slow (CI runs it after make test).
pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAIR = {"premise": "Les étudiants préparent un exposé.", "hypothesis": "Les étudiants travaillent."}
DRAIN_TIMEOUT_S = 10


def test_sigterm_drains_accepted_requests_and_exits_zero(demo_store: Path, tmp_path: Path) -> None:
    catalogue = write_catalogue(
        tmp_path / "variants.toml", demo_store, [{"name": "steady", "max_batch_size": 4, "faults": {"delay_ms": 60}}]
    )
    env = {"XNLI_SERVE_ENABLE_FAULT_INJECTION": "true", "XNLI_SERVE_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S)}
    with running_server(catalogue, tmp_path, extra_env=env) as server:
        # (send time, answer time, status or "503 <error type>" or transport error)
        sent: list[Outcome] = []
        readiness: list[tuple[float, int | str]] = []
        sigterm_at = 0.0

        async def watch_readiness(http: httpx.AsyncClient) -> None:
            while True:
                try:
                    status: int | str = (await http.get("/health/ready")).status_code
                except httpx.TransportError as error:
                    readiness.append((time.perf_counter(), type(error).__name__))
                    return
                readiness.append((time.perf_counter(), status))
                await asyncio.sleep(0.01)

        async def run() -> None:
            nonlocal sigterm_at
            async with (
                httpx.AsyncClient(base_url=server.base_url, timeout=30) as http,
                httpx.AsyncClient(base_url=server.base_url, timeout=5) as probe,
            ):
                clients = [
                    asyncio.ensure_future(predict_until_refused(http, {**PAIR, "variant": "steady"}, sent))
                    for _ in range(12)
                ]
                await asyncio.sleep(1.0)
                sigterm_at = time.perf_counter()
                server.process.send_signal(signal.SIGTERM)
                watcher = asyncio.ensure_future(watch_readiness(probe))
                await asyncio.wait_for(asyncio.gather(*clients, watcher), DRAIN_TIMEOUT_S + 10)

        asyncio.run(run())
        exit_code = server.process.wait(timeout=DRAIN_TIMEOUT_S + 5)
        exited_at = time.perf_counter()

    assert exit_code == 0, server.logs()
    assert exited_at - sigterm_at < DRAIN_TIMEOUT_S + 3
    # Loopback delivers a request within microseconds: one sent 50 ms before SIGTERM had reached the server.
    margin = 0.05
    # In flight at SIGTERM (sent before it, answered after it): accepted, so each must finish with 200.
    in_flight = [outcome for started, answered, outcome in sent if started < sigterm_at - margin < answered]
    assert len(in_flight) >= 6, sent  # 12 clients were busy: most were waiting for an answer at that moment
    assert set(in_flight) == {200}, in_flight
    # Sent well before SIGTERM: all answered 200, whenever they finished.
    before = [outcome for started, _, outcome in sent if started < sigterm_at - margin]
    assert before.count(200) > 12
    assert set(before) == {200}, before
    # The only refusal is "503 draining", and only for requests that arrived around or after SIGTERM; connection
    # errors only once the listener has closed, after the drain.
    after = [outcome for started, _, outcome in sent if started >= sigterm_at - margin]
    assert after, "load kept coming after SIGTERM"
    assert {outcome for outcome in after if outcome != 200} <= {"503 draining"} | {
        outcome for outcome in after if isinstance(outcome, str) and not outcome[0].isdigit()
    }, sent
    assert "503 draining" in after, sent
    assert all(outcome != 200 for started, _, outcome in sent if started > sigterm_at + 0.2), sent
    statuses = [status for _, status in readiness]
    assert statuses[0] == 503, statuses  # readiness flipped while the listener still answered
    assert isinstance(statuses[-1], str), statuses  # ... and only then did the listener close
    assert "drained: no request in flight" in server.logs()


def test_sigterm_loses_nothing_under_clients_that_keep_coming(demo_store: Path, tmp_path: Path) -> None:
    """16 keep-alive clients that go on after each 503 (a new connection each time: every answer while draining
    closes its connection) until their connection is refused. Before the process closes its listening socket it
    stops new handshakes and answers what the kernel had queued, so no request is reset after it was sent."""
    catalogue = write_catalogue(tmp_path / "variants.toml", demo_store, [{"name": "fast"}])
    env = {"XNLI_SERVE_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S)}
    with running_server(catalogue, tmp_path, extra_env=env) as server:
        sent = asyncio.run(
            drain_loss.load_then_stop(
                server.base_url, lambda: server.process.send_signal(signal.SIGTERM), "fast", clients=16
            )
        )
        exit_code = server.process.wait(timeout=DRAIN_TIMEOUT_S + 5)
    assert exit_code == 0, server.logs()
    assert len([request for request in sent if request.sent_s < -0.5 and request.outcome == "200"]) > 12, sent
    outcomes = {request.outcome for request in sent}
    assert outcomes <= {"200", "503 draining", drain_loss.REFUSED}, [
        request for request in sent if request.outcome not in ("200", "503 draining")
    ]
    assert "503 draining" in outcomes
