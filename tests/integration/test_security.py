"""API keys, public routes, CORS and body limits on a live process (private health and metrics are checked
in-process by tests/unit/api/test_private_endpoints.py)."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import API_KEY, CORS_ORIGIN, FILE_KEY
from tests.support.helpers import ServerProcess

pytestmark = pytest.mark.integration

KEYS = (API_KEY, FILE_KEY)
PAIR = {"premise": "Il pleut.", "hypothesis": "Le sol est mouillé."}
PROTECTED = [
    ("POST", "/predict", PAIR, 200),
    ("POST", "/variants/xlmr-mnli/predict", PAIR, 200),
    ("GET", "/variants", None, 200),
    ("GET", "/variants/xlmr-mnli", None, 200),
]
PUBLIC = [
    "/health/live",
    "/health/ready",
    "/metrics",
    "/docs",
    "/redoc",
    "/static/docs/swagger-ui-bundle.js",
    "/openapi.json",
    "/",
    "/playground",
    "/static/playground/playground.js",
]


@pytest.mark.parametrize(("method", "path", "body", "expected"), PROTECTED)
@pytest.mark.parametrize(
    ("authorization", "allowed"),
    [
        pytest.param(None, False, id="no-key"),
        pytest.param("Bearer wrong-key", False, id="wrong-key"),
        pytest.param(f"Basic {KEYS[0]}", False, id="wrong-scheme"),
        pytest.param(f"Bearer {KEYS[0]}", True, id="key-from-env"),
        pytest.param(f"bearer {KEYS[1]}", True, id="key-from-file"),
    ],
)
def test_protected_routes(
    secured_server: ServerProcess,
    method: str,
    path: str,
    body: dict[str, str] | None,
    expected: int,
    authorization: str | None,
    allowed: bool,
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.request(method, f"{secured_server.base_url}{path}", json=body, headers=headers)
    if allowed:
        assert response.status_code == expected
    else:
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "unauthorized"
        assert response.headers["www-authenticate"].startswith('Bearer realm="xnli-serve"')


@pytest.mark.parametrize("path", PUBLIC)
def test_public_routes_need_no_key(secured_server: ServerProcess, path: str) -> None:
    assert httpx.get(f"{secured_server.base_url}{path}").status_code == 200


def test_cors_only_for_configured_origins(secured_server: ServerProcess) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = httpx.options(f"{secured_server.base_url}/predict", headers={"Origin": CORS_ORIGIN, **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == CORS_ORIGIN
    refused = httpx.options(
        f"{secured_server.base_url}/predict", headers={"Origin": "https://evil.example", **preflight}
    )
    assert "access-control-allow-origin" not in refused.headers


def test_cors_is_off_by_default(server: ServerProcess) -> None:
    response = httpx.get(f"{server.base_url}/variants", headers={"Origin": CORS_ORIGIN})
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_limit_is_413(server: ServerProcess, chunked: bool) -> None:
    payload = b'{"premise": "' + b"a" * (1_048_576 + 10) + b'", "hypothesis": "b"}'
    content = iter([payload[i : i + 65536] for i in range(0, len(payload), 65536)]) if chunked else payload
    response = httpx.post(f"{server.base_url}/predict", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "payload_too_large"
