"""Slow: a real Prometheus, with exemplar storage, scrapes a traced server over OpenMetrics; its query_exemplars API
gives, for the request-duration and queue-wait histograms, trace ids that the OTLP receiver holds."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.tracing.receiver import OtlpReceiver
from tests.integration.tracing.conftest import traced_catalogue, traced_env
from tests.support.helpers import ServerProcess, running_server
from tests.support.observability import running_prometheus

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("prometheus") is None and not os.environ.get("CI"),
        reason="prometheus binary not installed (apt-get install prometheus; .ci/run installs it)",
    ),
]

PAIR = {"premise": "Snow fell on the mountain pass overnight.", "hypothesis": "The pass was snowy in the morning."}


@pytest.fixture(scope="module")
def server(
    demo_store: Path, receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("exemplars")
    with running_server(traced_catalogue(folder, demo_store), folder, traced_env(receiver)) as process:
        yield process


@pytest.fixture(scope="module")
def prometheus(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus with exemplar storage (a feature flag): it then asks for OpenMetrics first, which carries them."""
    folder = tmp_path_factory.mktemp("prometheus-exemplars")
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [
            {"job_name": "xnli-serve", "static_configs": [{"targets": [server.base_url.removeprefix("http://")]}]}
        ],
    }
    with running_prometheus(folder, config, "--enable-feature=exemplar-storage") as url:
        yield url


def exemplar_trace_ids(prometheus: str, expression: str, start: float) -> set[str]:
    response = httpx.get(
        f"{prometheus}/api/v1/query_exemplars",
        params={"query": expression, "start": start, "end": time.time() + 1},
        timeout=10,
    ).json()
    assert response["status"] == "success", response
    return {
        exemplar["labels"]["trace_id"]
        for series in response["data"]
        for exemplar in series["exemplars"]
        if "trace_id" in exemplar["labels"]
    }


@pytest.mark.parametrize(
    "expression",
    ['xnli_request_duration_seconds_bucket{variant="solo"}', 'xnli_queue_duration_seconds_bucket{variant="solo"}'],
)
def test_prometheus_stores_the_trace_ids_of_sampled_requests_as_exemplars(
    server: ServerProcess, prometheus: str, receiver: OtlpReceiver, expression: str
) -> None:
    start = time.time() - 1
    found: set[str] = set()
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        while not found and time.monotonic() < deadline:
            for _ in range(5):
                assert http.post("/predict", json={**PAIR, "variant": "solo"}).status_code == 200
            time.sleep(1.2)  # at least one scrape
            found = exemplar_trace_ids(prometheus, expression, start)
    assert found, f"no exemplar for {expression} within 30 s"
    received = {span.trace_id for span in receiver.wait_for(lambda spans: found <= {s.trace_id for s in spans})}
    assert found <= received  # every exemplar leads to a trace the collector holds
