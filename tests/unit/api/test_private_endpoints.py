"""Private health and metrics in-process: with XNLI_SERVE_PUBLIC_METRICS / _PUBLIC_HEALTH false they need the key.

Moved from tests/integration/test_security.py (a real server started for this alone): the settings come from the
environment, as `xnli-serve serve` reads them.
"""

from __future__ import annotations

import pytest

from app.engine.engine import Engine
from tests.unit.api.conftest import API_KEY, client_for

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.mark.parametrize(
    ("public_metrics", "public_health", "private"),
    [
        pytest.param("false", "false", {"/metrics", "/health/live", "/health/ready"}, id="both-private"),
        pytest.param("false", "true", {"/metrics"}, id="metrics-private"),
        pytest.param("true", "false", {"/health/live", "/health/ready"}, id="health-private"),
    ],
)
async def test_private_endpoints_need_the_key(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, public_metrics: str, public_health: str, private: set[str]
) -> None:
    monkeypatch.setenv("XNLI_SERVE_API_KEYS", API_KEY)
    monkeypatch.setenv("XNLI_SERVE_PUBLIC_METRICS", public_metrics)
    monkeypatch.setenv("XNLI_SERVE_PUBLIC_HEALTH", public_health)
    async with client_for(engine) as http:
        for path in ("/metrics", "/health/live", "/health/ready"):
            anonymous = await http.get(path)
            if path in private:
                assert anonymous.status_code == 401, path
                assert anonymous.json()["error"]["type"] == "unauthorized"
            else:
                assert anonymous.status_code == 200, path
            assert (await http.get(path, headers=AUTH)).status_code == 200, path
        assert (await http.get("/variants")).status_code == 401  # the API itself stays protected either way
