"""Faults injected at the runner boundary of a live process: only the failing batch's requests fail."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.helpers import ServerProcess, metric_value, running_server, write_catalogue

# Long end-to-end runs (injected faults in a real server): make test-slow (CI runs it after make test).
pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAIR = {"premise": "Il pleut depuis ce matin.", "hypothesis": "Le sol est mouillé."}
FAULTS_ON = {"XNLI_SERVE_ENABLE_FAULT_INJECTION": "true"}


@pytest.fixture(scope="module")
def faulty_server(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("faults")
    catalogue = write_catalogue(
        folder / "variants.toml",
        demo_store,
        [
            {"name": "healthy"},
            {"name": "broken", "checkpoint": "xlmr-squad-mnli", "faults": {"fail_every": 1, "delay_ms": 20}},
            {"name": "small-memory", "checkpoint": "xlmr-hellaswag-mnli", "faults": {"oom_above": 2}},
        ],
    )
    with running_server(catalogue, folder, extra_env=FAULTS_ON) as server:
        yield server


@pytest.fixture(scope="module")
def doomed_server(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own: its device worker dies, whatever order the tests run in."""
    folder = tmp_path_factory.mktemp("doomed")
    catalogue = write_catalogue(
        folder / "variants.toml",
        demo_store,
        [{"name": "healthy"}, {"name": "doomed", "checkpoint": "xlmr-multitask-mnli", "faults": {"kill_after": 1}}],
    )
    with running_server(catalogue, folder, extra_env=FAULTS_ON) as server:
        yield server


def test_failing_forward_fails_only_its_requests(faulty_server: ServerProcess) -> None:
    async def run() -> tuple[list[httpx.Response], list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=faulty_server.base_url, timeout=30) as http:
            broken = [http.post("/predict", json={**PAIR, "variant": "broken"}) for _ in range(8)]
            healthy = [http.post("/predict", json={**PAIR, "variant": "healthy"}) for _ in range(8)]
            responses = await asyncio.gather(*broken, *healthy)
            return list(responses[:8]), list(responses[8:])

    broken, healthy = asyncio.run(run())
    assert {response.status_code for response in broken} == {500}
    assert {response.json()["error"]["type"] for response in broken} == {"inference_error"}
    assert "injected fault" in broken[0].json()["error"]["message"]
    assert {response.status_code for response in healthy} == {200}
    assert httpx.get(f"{faulty_server.base_url}/health/live").status_code == 200
    assert httpx.get(f"{faulty_server.base_url}/health/ready").status_code == 200
    metrics = httpx.get(f"{faulty_server.base_url}/metrics").text
    assert metric_value(metrics, "xnli_request_failures_total", variant="broken", reason="inference") == 8
    assert metric_value(metrics, "xnli_requests_total", variant="broken", outcome="error") == 8


def test_out_of_memory_splits_the_batch_and_answers(faulty_server: ServerProcess) -> None:
    inputs = [PAIR, {"premise": "Кошка спит.", "hypothesis": "Животное отдыхает."}] * 4
    response = httpx.post(f"{faulty_server.base_url}/predict", json={"inputs": inputs, "variant": "small-memory"})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert len(predictions) == 8
    assert predictions[0]["scores"] == predictions[2]["scores"]
    metrics = httpx.get(f"{faulty_server.base_url}/metrics").text
    assert metric_value(metrics, "xnli_batch_splits_total", variant="small-memory") >= 3  # 8 -> 4+4 -> 2+2+2+2


def test_dead_device_worker_fails_liveness(doomed_server: ServerProcess) -> None:
    """Afterwards nothing runs on that server's device any more."""
    base_url = doomed_server.base_url
    first = httpx.post(f"{base_url}/predict", json={**PAIR, "variant": "doomed"})
    assert first.status_code == 500
    assert first.json()["error"]["type"] == "inference_error"
    assert httpx.get(f"{base_url}/health/live").status_code == 503
    assert httpx.get(f"{base_url}/health/ready").status_code == 503
    after = httpx.post(f"{base_url}/predict", json={**PAIR, "variant": "healthy"})
    assert after.status_code == 500  # same device: nothing can run there any more, and it says so
    assert "is down" in after.json()["error"]["message"]
