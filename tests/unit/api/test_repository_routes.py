"""The model repository extension over HTTP, in-process: index, load (a new entry, a reload, a failing one) and unload,
and what /variants, /metrics and readiness say meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.engine.engine import Engine
from app.engine.models.catalogue import load_catalogue
from tests.support.checkpoint_edits import perturbed_copy
from tests.support.helpers import metric_value, write_catalogue
from tests.unit.api.conftest import API_KEY, client_for

ALPHA: dict[str, object] = {"name": "alpha"}
BETA: dict[str, object] = {"name": "beta", "checkpoint": "xlmr-squad-mnli"}
INPUTS = {
    "inputs": [
        {"name": "premise", "shape": [1], "datatype": "BYTES", "data": ["Der Hund schläft im Garten."]},
        {"name": "hypothesis", "shape": [1], "datatype": "BYTES", "data": ["Ein Tier ruht sich aus."]},
    ]
}


@pytest.fixture
def catalogue(tmp_path: Path, demo_store: Path) -> Path:
    return write_catalogue(tmp_path / "variants.toml", demo_store, [ALPHA])


@pytest.fixture
async def engine_alone(catalogue: Path) -> AsyncIterator[Engine]:
    """An engine of its own: these tests change what it serves."""
    instance = Engine(load_catalogue(catalogue), tokenization_workers=1, torch_threads=1)
    instance.preflight()
    await asyncio.to_thread(instance.load)
    yield instance
    instance.close()


@pytest.fixture
async def http(engine_alone: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(engine_alone) as client:
        yield client


async def index(http: httpx.AsyncClient, body: bytes = b"") -> dict[str, dict[str, Any]]:
    response = await http.post("/v2/repository/index", content=body)
    assert response.status_code == 200, response.text
    return {entry["name"]: entry for entry in response.json()}


async def test_index_lists_the_catalogue_with_states(
    http: httpx.AsyncClient, catalogue: Path, demo_store: Path
) -> None:
    write_catalogue(catalogue, demo_store, [ALPHA, BETA])
    entries = await index(http)
    assert entries == {
        "alpha": {"name": "alpha", "version": "1", "state": "READY", "reason": ""},
        "beta": {"name": "beta", "version": "1", "state": "UNAVAILABLE", "reason": "in the catalogue, not loaded"},
    }
    assert set(await index(http, b'{"ready": true}')) == {"alpha"}
    response = await http.post("/v2/repository/index", content=b'{"ready": "maybe"}')
    assert response.status_code == 400
    assert "invalid repository request: ready" in response.json()["error"]


async def test_load_serves_a_new_entry_and_everything_follows(
    http: httpx.AsyncClient, catalogue: Path, demo_store: Path
) -> None:
    assert (await http.get("/v2/models/beta/ready")).status_code == 404
    write_catalogue(catalogue, demo_store, [ALPHA, BETA])
    loading = asyncio.ensure_future(http.post("/v2/repository/models/beta/load", content=b"{}"))
    while (await index(http))["beta"]["state"] != "LOADING":
        assert not loading.done()
        await asyncio.sleep(0)
    # While beta loads, the service and alpha stay ready.
    assert (await http.get("/health/ready")).status_code == 200
    assert (await http.get("/v2/health/ready")).status_code == 200
    assert (await http.get("/v2/models/alpha/ready")).status_code == 200
    assert (await http.post("/v2/models/alpha/infer", json=INPUTS)).status_code == 200

    loaded = await loading
    assert loaded.status_code == 200, loaded.text
    assert loaded.json() == {"name": "beta", "version": "1", "state": "READY", "reason": ""}
    assert (await http.get("/v2/models/beta/ready")).json() == {"name": "beta", "ready": True}
    assert (await http.post("/v2/models/beta/infer", json=INPUTS)).status_code == 200
    variants = {variant["name"]: variant for variant in (await http.get("/variants")).json()["variants"]}
    assert variants["beta"]["status"] == "ready"
    assert variants["beta"]["intermediate_task"] == "none"
    assert metric_value((await http.get("/metrics")).text, "xnli_variant_info", variant="beta") == 1


async def test_unload_frees_the_variant_and_everything_follows(
    http: httpx.AsyncClient, catalogue: Path, demo_store: Path
) -> None:
    write_catalogue(catalogue, demo_store, [ALPHA, BETA])
    assert (await http.post("/v2/repository/models/beta/load")).status_code == 200
    unloaded = await http.post("/v2/repository/models/beta/unload", json={"parameters": {"unload_dependents": False}})
    assert unloaded.status_code == 200, unloaded.text
    assert unloaded.json()["state"] == "UNAVAILABLE"
    assert unloaded.json()["reason"] == "unloaded"
    assert (await http.get("/v2/models/beta/ready")).status_code == 404
    refused = await http.post("/v2/models/beta/infer", json=INPUTS)
    assert refused.status_code == 404
    assert "unknown variant 'beta'" in refused.json()["error"]
    variants = {variant["name"]: variant for variant in (await http.get("/variants")).json()["variants"]}
    assert variants["beta"]["status"] == "unloaded"
    assert metric_value((await http.get("/metrics")).text, "xnli_variant_info", variant="beta") == 0
    assert (await http.get("/health/ready")).status_code == 200
    assert (await http.post("/v2/repository/models/beta/unload")).status_code == 200  # nothing to do


async def test_unloading_the_default_variant_is_refused(http: httpx.AsyncClient) -> None:
    """409 naming why (no split covers it); the variant keeps serving and the service stays ready."""
    refused = await http.post("/v2/repository/models/alpha/unload")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"].startswith("variant 'alpha' is the default variant: requests that name no variant")
    assert (await http.get("/v2/models/alpha/ready")).status_code == 200
    assert (await http.post("/predict", json={"premise": "a", "hypothesis": "b"})).headers["X-Variant"] == "alpha"
    assert (await http.get("/health/ready")).status_code == 200


async def test_reload_switches_to_the_changed_checkpoint(
    http: httpx.AsyncClient, catalogue: Path, demo_store: Path, tmp_path: Path
) -> None:
    async def probabilities() -> list[float]:
        response = await http.post("/v2/models/alpha/infer", json=INPUTS)
        outputs = {output["name"]: output for output in response.json()["outputs"]}
        data: list[float] = outputs["probabilities"]["data"]
        return data

    before = await probabilities()
    changed = perturbed_copy(demo_store / "xlmr-mnli", tmp_path / "alpha-v2", (-3.0, 0.0, 3.0))
    write_catalogue(catalogue, demo_store, [{"name": "alpha", "path": str(changed)}])
    assert (await http.post("/v2/repository/models/alpha/load")).status_code == 200
    after = await probabilities()
    assert after != pytest.approx(before, abs=1e-3)
    variants = {variant["name"]: variant for variant in (await http.get("/variants")).json()["variants"]}
    assert variants["alpha"]["path"] == str(changed)


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/repository/models/ghost/load", b"", 404, "unknown variant 'ghost'"),
        ("/v2/repository/models/ghost/unload", b"", 404, "unknown variant 'ghost'"),
        ("/v2/repository/models/alpha/load", b'{"parameters": {"config": "{}"}}', 400, "edit the entry of 'alpha'"),
        ("/v2/repository/models/alpha/load", b'{"parameters": {"file:1/model.pt": "AAAA"}}', 400, "not supported"),
        ("/v2/repository/models/alpha/load", b"[1, 2]", 400, "invalid repository request"),
        ("/v2/repository/models/alpha/unload", b'{"parameters": {"cascade": true}}', 400, "unknown unload parameter"),
        ("/v2/repository/models/alpha/unload", b'{"parameters": {"unload_dependents": 1}}', 400, "must be a boolean"),
    ],
    ids=[
        "load-unknown",
        "unload-unknown",
        "config-override",
        "file-override",
        "not-an-object",
        "unknown-param",
        "flag",
    ],
)
async def test_repository_errors(http: httpx.AsyncClient, path: str, body: bytes, status: int, message: str) -> None:
    response = await http.post(path, content=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert (await http.get("/v2/models/alpha/ready")).status_code == 200


async def test_a_failing_load_answers_why_and_the_old_version_serves(
    http: httpx.AsyncClient, catalogue: Path, demo_store: Path
) -> None:
    before = (await http.post("/v2/models/alpha/infer", json=INPUTS)).json()["outputs"]
    strict_guard = {**ALPHA, "dtype": "bfloat16", "max_probability_diff": 0.0, "min_top1_agreement": 1.0}
    write_catalogue(catalogue, demo_store, [strict_guard])
    failed = await http.post("/v2/repository/models/alpha/load")
    assert failed.status_code == 400
    assert "accuracy guard failed" in failed.json()["error"]
    assert (await http.post("/v2/models/alpha/infer", json=INPUTS)).json()["outputs"] == before
    entry = (await index(http))["alpha"]
    assert entry["state"] == "READY"
    assert "the last load failed, this version still serves" in entry["reason"]


async def test_a_load_while_one_runs_is_409(http: httpx.AsyncClient) -> None:
    first = asyncio.ensure_future(http.post("/v2/repository/models/alpha/load"))
    for _ in range(10_000):
        if (await index(http))["alpha"]["reason"] == "a new version is loading":
            break
        await asyncio.sleep(0)
    second = await http.post("/v2/repository/models/alpha/load")
    assert second.status_code == 409
    assert "being loaded already" in second.json()["error"]
    assert (await first).status_code == 200


@pytest.mark.parametrize(
    "path", ["/v2/repository/index", "/v2/repository/models/alpha/load", "/v2/repository/models/alpha/unload"]
)
async def test_repository_routes_need_the_api_key(engine_alone: Engine, path: str) -> None:
    async with client_for(engine_alone, api_keys=API_KEY) as keyed:
        assert (await keyed.post(path)).status_code == 401
        assert (await keyed.post(path, headers={"Authorization": "Bearer wrong-key"})).status_code == 401
    assert engine_alone.variant_ready("alpha")
