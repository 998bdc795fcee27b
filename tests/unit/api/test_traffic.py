"""Split, sticky routing keys, priority and language over HTTP, in-process (the real app and engine, no socket)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from app.engine.engine import Engine
from app.engine.models.catalogue import load_catalogue
from tests.support.helpers import write_catalogue
from tests.unit.api.conftest import client_for

PAIR = {"premise": "Il pleut depuis ce matin.", "hypothesis": "Le sol est sec."}
SPLIT = {"tr-a": 3.0, "tr-b": 1.0}


@pytest.fixture(scope="module")
def engine(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    path = write_catalogue(
        tmp_path_factory.mktemp("traffic") / "variants.toml",
        demo_store,
        [{"name": "tr-a"}, {"name": "tr-b", "checkpoint": "xlmr-squad-mnli"}, {"name": "tr-c"}],
    )
    path.write_text(
        path.read_text(encoding="utf-8") + '\n[traffic]\nsplit = { "tr-a" = 3.0, "tr-b" = 1.0 }\n', encoding="utf-8"
    )
    loaded = Engine(load_catalogue(path), tokenization_workers=1, torch_threads=1, traffic_seed=11)
    loaded.preflight()
    loaded.load()
    yield loaded
    loaded.close()


@pytest.fixture
async def client(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(engine) as http:
        yield http


def routed(variant: str, route: str) -> float:
    return REGISTRY.get_sample_value("xnli_routed_requests_total", {"variant": variant, "route": route}) or 0.0


async def test_requests_without_a_variant_follow_the_split(client: httpx.AsyncClient) -> None:
    before = {name: routed(name, "split") for name in SPLIT}
    answered: Counter[str] = Counter()
    for _ in range(240):
        response = await client.post("/predict", json=PAIR)
        assert response.status_code == 200
        assert response.json()["variant"] == response.headers["X-Variant"]
        answered[response.headers["X-Variant"]] += 1
    expected = {name: 240 * weight / sum(SPLIT.values()) for name, weight in SPLIT.items()}
    statistic = sum((answered[name] - want) ** 2 / want for name, want in expected.items())
    assert statistic < 10.828, (answered, expected)  # chi-square, 1 degree of freedom, 0.1% level
    assert {name: routed(name, "split") - before[name] for name in SPLIT} == answered


async def test_a_routing_key_always_gets_the_same_variant(client: httpx.AsyncClient) -> None:
    seen: dict[str, set[str]] = {}
    for _ in range(3):
        for index in range(40):
            key = f"user-{index}"
            response = await client.post("/predict", json=PAIR, headers={"X-Routing-Key": key})
            assert response.status_code == 200, response.text
            seen.setdefault(key, set()).add(response.headers["X-Variant"])
    assert all(len(variants) == 1 for variants in seen.values()), seen
    assert {variant for variants in seen.values() for variant in variants} == set(SPLIT)


@pytest.mark.parametrize(
    ("path", "body", "headers", "expected"),
    [
        ("/predict", {**PAIR, "variant": "tr-c"}, {"X-Routing-Key": "user-1"}, "tr-c"),
        ("/predict", {**PAIR, "variant": "tr-b"}, {}, "tr-b"),
        ("/variants/tr-c/predict", PAIR, {"X-Routing-Key": "user-1"}, "tr-c"),
    ],
    ids=["body-variant-beats-key", "body-variant", "path-variant"],
)
async def test_an_explicit_variant_always_wins(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], headers: dict[str, str], expected: str
) -> None:
    before = routed(expected, "explicit")
    response = await client.post(path, json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["X-Variant"] == expected
    assert routed(expected, "explicit") == before + 1


async def test_v2_infer_names_its_model_and_ignores_the_split(client: httpx.AsyncClient) -> None:
    body = {
        "inputs": [
            {"name": "premise", "shape": [1], "datatype": "BYTES", "data": [PAIR["premise"]]},
            {"name": "hypothesis", "shape": [1], "datatype": "BYTES", "data": [PAIR["hypothesis"]]},
        ],
        "parameters": {"priority": "batch", "language": "fr"},
    }
    response = await client.post("/v2/models/tr-c/infer", json=body, headers={"X-Routing-Key": "user-1"})
    assert response.status_code == 200, response.text
    assert response.json()["model_name"] == "tr-c"


def priority_count(variant: str, priority: str) -> float:
    return REGISTRY.get_sample_value("xnli_priority_requests_total", {"variant": variant, "priority": priority}) or 0.0


def predictions(variant: str, language: str) -> float:
    return sum(
        REGISTRY.get_sample_value("xnli_predictions_total", {"variant": variant, "label": label, "language": language})
        or 0.0
        for label in ("entailment", "neutral", "contradiction")
    )


@pytest.mark.parametrize(
    ("fields", "priority", "language"),
    [
        ({}, "interactive", "unspecified"),
        ({"priority": "batch", "language": "sw"}, "batch", "sw"),
        ({"priority": "interactive", "language": "zh-Hant"}, "interactive", "zh"),
        ({"language": "ja"}, "interactive", "other"),  # not an XNLI language: counted, without a label of its own
    ],
)
async def test_priority_and_language_are_taken_and_counted(
    client: httpx.AsyncClient, fields: dict[str, str], priority: str, language: str
) -> None:
    before = (priority_count("tr-c", priority), predictions("tr-c", language))
    response = await client.post("/predict", json={"inputs": [PAIR, PAIR], "variant": "tr-c", **fields})
    assert response.status_code == 200, response.text
    assert (priority_count("tr-c", priority), predictions("tr-c", language)) == (before[0] + 1, before[1] + 2)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"priority": "shadow"}, "Input should be 'interactive' or 'batch'"),
        ({"priority": "urgent"}, "Input should be 'interactive' or 'batch'"),
        ({"priority": 1}, "Input should be 'interactive' or 'batch'"),
        ({"language": ""}, "at least 1 character"),
        ({"language": "x" * 36}, "at most 35 characters"),
        ({"language": 7}, "Input should be a valid string"),
    ],
)
async def test_bad_priority_or_language_is_a_422(
    client: httpx.AsyncClient, fields: dict[str, object], message: str
) -> None:
    response = await client.post("/predict", json={**PAIR, **fields})
    assert response.status_code == 422
    assert message in response.text


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"priority": "shadow"}, "parameter 'priority' must be one of interactive, batch"),
        ({"priority": True}, "parameter 'priority' must be one of interactive, batch"),
        ({"language": 5}, "parameter 'language' must be a language code"),
        ({"language": ""}, "parameter 'language' must be a language code"),
    ],
)
async def test_bad_v2_priority_or_language_is_a_400(
    client: httpx.AsyncClient, parameters: dict[str, object], message: str
) -> None:
    body = {
        "inputs": [
            {"name": "premise", "shape": [1], "datatype": "BYTES", "data": ["a"]},
            {"name": "hypothesis", "shape": [1], "datatype": "BYTES", "data": ["b"]},
        ],
        "parameters": parameters,
    }
    response = await client.post("/v2/models/tr-c/infer", json=body)
    assert response.status_code == 400
    assert message in response.json()["error"]


async def test_a_split_variant_that_is_unloaded_leaves_its_share_to_the_others(
    demo_store: Path, tmp_path: Path
) -> None:
    """Requests that name no variant never get a 503 for a split variant taken out of service; they go to the rest,
    and an explicit request for it is still told it is gone."""
    path = write_catalogue(tmp_path / "variants.toml", demo_store, [{"name": "un-a"}, {"name": "un-b"}])
    path.write_text(
        path.read_text(encoding="utf-8") + '\n[traffic]\nsplit = { "un-a" = 1, "un-b" = 1 }\n', encoding="utf-8"
    )
    engine = Engine(load_catalogue(path), tokenization_workers=1, torch_threads=1, traffic_seed=3)
    engine.preflight()
    engine.load()
    try:
        async with client_for(engine) as http:
            await engine.unload_variant("un-b")
            answered = Counter[str]()
            for index in range(30):
                response = await http.post("/predict", json=PAIR, headers={"X-Routing-Key": f"user-{index}"})
                assert response.status_code == 200, response.text
                answered[response.headers["X-Variant"]] += 1
            assert answered == {"un-a": 30}
            assert (await http.post("/predict", json={**PAIR, "variant": "un-b"})).status_code == 404
    finally:
        engine.close()
