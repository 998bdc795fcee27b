"""One readiness decision for both protocols (native /health/ready, OIP /v2/health/ready)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from app.service.health import readiness


def fake_engine(draining: bool, ready: bool) -> Any:
    def runtime(status: str, enabled: bool = True) -> SimpleNamespace:
        return SimpleNamespace(status=status, spec=SimpleNamespace(enabled=enabled))

    variants = {"a": runtime("ready"), "b": runtime("loading"), "off": runtime("pending", enabled=False)}
    return SimpleNamespace(variants=variants, draining=draining, ready=ready)


@pytest.mark.parametrize(
    ("draining", "ready", "state"),
    [(False, True, "ready"), (False, False, "not_ready"), (True, False, "draining"), (True, True, "draining")],
)
def test_readiness_states(draining: bool, ready: bool, state: str) -> None:
    decided = readiness(fake_engine(draining, ready))
    assert decided.state == state
    assert decided.ready is (state == "ready")
    assert decided.variants == {"a": "ready", "b": "loading"}  # enabled variants only


async def test_both_protocols_answer_the_same_readiness(client: httpx.AsyncClient) -> None:
    native = await client.get("/health/ready")
    oip = await client.get("/v2/health/ready")
    assert native.status_code == oip.status_code == 200
    assert native.json()["status"] == "ready"
    assert oip.json() == {"ready": True}
