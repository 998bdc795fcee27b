"""/predict: limits that no amount of waiting would meet are client errors (4xx), not overload (429)."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import REGISTRY

PAIR = {"premise": "Der Hund schläft im Garten.", "hypothesis": "Ein Tier ruht sich aus."}


def requests_total(variant: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("xnli_requests_total", {"variant": variant, "outcome": outcome}) or 0.0


@pytest.mark.parametrize("timeout_ms", [0.001, 5e-324], ids=["one-microsecond", "smallest-positive-float"])
async def test_deadline_too_short_for_an_idle_device_is_422_naming_the_minimum(
    client: httpx.AsyncClient, timeout_ms: float
) -> None:
    """5e-324 ms is schema-valid (> 0) although it underflows to 0.0 s: still a too-short deadline, not a bad value."""
    overloaded_before = requests_total("xlmr-mnli", "overloaded")
    response = await client.post("/predict", json={**PAIR, "timeout_ms": timeout_ms})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "deadline_too_short"
    assert "its fastest forward pass takes" in error["message"]
    assert error["details"][0]["minimum_ms"] > timeout_ms
    assert requests_total("xlmr-mnli", "overloaded") == overloaded_before  # the overload alert stays quiet
    enough = await client.post("/predict", json={**PAIR, "timeout_ms": 10_000})
    assert enough.status_code == 200


async def test_more_pairs_than_the_variant_queue_holds_is_413_not_429(client: httpx.AsyncClient) -> None:
    pairs = {"inputs": [PAIR] * 9, "variant": "small-queue"}  # its max_queue_pairs is 8, and it is idle
    response = await client.post("/predict", json=pairs)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["type"] == "too_many_pairs"
    assert "max_queue_pairs=8" in error["message"]
    assert "retry-after" not in response.headers
    fits = await client.post("/predict", json={"inputs": [PAIR] * 8, "variant": "small-queue"})
    assert fits.status_code == 200
