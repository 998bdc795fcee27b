"""Slow, real servers: the trace of a request across a front-end process and the engine process (one trace id over
the ZeroMQ channel), and a server whose collector is unreachable answers every request all the same."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from pathlib import Path

import httpx
import pytest

from app.tracing.receiver import OtlpReceiver, ReceivedSpan
from tests.integration.tracing.conftest import NARROW_PAIRS, traced_catalogue, traced_env
from tests.support.helpers import running_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
PAIR = {"premise": "The library closes at six on Sundays.", "hypothesis": "The library is open all night."}


def test_a_request_is_one_trace_across_the_front_end_and_engine_processes(
    demo_store: Path, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    env = traced_env(receiver, XNLI_SERVE_FRONTEND_PROCESSES="2")
    with running_server(traced_catalogue(tmp_path, demo_store), tmp_path, env) as server:
        response = httpx.post(
            f"{server.base_url}/predict",
            json={**PAIR, "variant": "solo"},
            headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
        )
        assert response.status_code == 200

        def complete(spans: list[ReceivedSpan]) -> bool:
            names = {span.name for span in spans if span.trace_id == CLIENT_TRACE}
            return {"POST /predict", "engine call", "engine request", "device batch", "queue wait"} <= names

        spans = [span for span in receiver.wait_for(complete, timeout_s=20) if span.trace_id == CLIENT_TRACE]
        # The engine process's queue-wait exemplars reach the front end's OpenMetrics scrape.
        scraped = httpx.get(f"{server.base_url}/metrics", headers={"accept": "application/openmetrics-text"}).text
        assert re.search(
            rf'^xnli_queue_duration_seconds_bucket{{[^}}]*}} \S+ # {{trace_id="{CLIENT_TRACE}"}}', scraped, re.M
        )
    by_name = {span.name: span for span in spans}
    front, call, engine = by_name["POST /predict"], by_name["engine call"], by_name["engine request"]
    assert front.parent_span_id == CLIENT_SPAN
    assert call.parent_span_id == front.span_id
    assert engine.parent_span_id == call.span_id  # the context crossed the channel
    assert (front.resource["xnli.process"], call.resource["xnli.process"]) == ("front-end", "front-end")
    assert engine.resource["xnli.process"] == "engine"
    assert by_name["device batch"].parent_span_id == engine.span_id
    assert by_name["device batch"].resource["xnli.process"] == "engine"
    # Tokenized once: by the front end when it holds the variant's encoder already, else by the engine.
    tokenization = [span for span in spans if span.name == "tokenization"]
    assert len(tokenization) == 1
    assert tokenization[0].parent_span_id in (call.span_id, engine.span_id)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_an_unreachable_collector_loses_spans_never_requests(demo_store: Path, tmp_path: Path) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_BSP_MAX_QUEUE_SIZE": "64",  # full at once: spans beyond it are dropped, requests go on
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "32",
        "XNLI_SERVE_MAX_PAIRS_PER_REQUEST": str(NARROW_PAIRS),
    }

    async def load(base_url: str) -> list[tuple[int, float]]:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:

            async def one(index: int) -> tuple[int, float]:
                started = time.perf_counter()
                response = await http.post("/predict", json={**PAIR, "variant": "shadowed"})
                return response.status_code, time.perf_counter() - started

            return await asyncio.gather(*(one(index) for index in range(60)))

    with running_server(traced_catalogue(tmp_path, demo_store), tmp_path, env) as server:
        answered = asyncio.run(load(server.base_url))
        assert [status for status, _ in answered] == [200] * 60
        assert max(seconds for _, seconds in answered) < 10
        assert "traceparent" in httpx.get(f"{server.base_url}/variants").headers  # traced all along
        assert httpx.get(f"{server.base_url}/health/live").status_code == 200
