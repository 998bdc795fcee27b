"""API keys in-process: every method and spelling of a protected path needs the key; keys never sit in plain text."""

from __future__ import annotations

import httpx
import pytest

from app.engine.engine import Engine
from tests.unit.api.conftest import API_KEY, client_for

PAIR = {"premise": "Il pleut.", "hypothesis": "Le sol est mouillé."}
V2_BODY = {
    "inputs": [
        {"name": "premise", "shape": [1], "datatype": "BYTES", "data": ["Il pleut."]},
        {"name": "hypothesis", "shape": [1], "datatype": "BYTES", "data": ["Le sol est mouillé."]},
    ]
}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/predict"),
        ("OPTIONS", "/predict"),
        ("HEAD", "/variants"),
        ("GET", "/variants/"),
        ("POST", "//predict"),
        ("POST", "/predict/"),
        ("POST", "/%70redict"),
        ("POST", "/variants/xlmr-mnli/predict"),
        ("GET", "/v2"),
        ("GET", "/v2/models/xlmr-mnli"),
        ("POST", "/v2/models/xlmr-mnli/infer"),
        ("OPTIONS", "/v2/models/xlmr-mnli/infer"),
    ],
)
async def test_protected_without_a_key(keyed_client: httpx.AsyncClient, method: str, path: str) -> None:
    body = V2_BODY if path.startswith("/v2") else PAIR
    # A full URL: httpx would read "//predict" against the base URL as a host name, not a path.
    url = f"http://testserver{path}"
    response = await keyed_client.request(method, url, json=body if method == "POST" else None)
    assert response.status_code == 401, (method, path, response.status_code)
    if method != "HEAD":  # each protocol's own error shape, middleware answers included
        error = response.json()["error"]
        if path.startswith("/v2"):
            assert error.startswith("missing API key")
        else:
            assert error["type"] == "unauthorized"


@pytest.mark.parametrize(("path", "body"), [("/predict", PAIR), ("/v2/models/xlmr-mnli/infer", V2_BODY)])
async def test_the_key_opens_them(keyed_client: httpx.AsyncClient, path: str, body: dict[str, object]) -> None:
    response = await keyed_client.post(path, json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200


async def test_cors_preflight_is_answered_without_a_key(engine: Engine) -> None:
    preflight = {"Origin": "https://dash.example", "Access-Control-Request-Method": "POST"}
    async with client_for(engine, api_keys=API_KEY, cors_origins="https://dash.example") as http:
        response = await http.options("/predict", headers=preflight)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://dash.example"
        plain_options = await http.options("/predict")
        assert plain_options.status_code == 401


async def test_keys_are_not_kept_in_plain_text(keyed_client: httpx.AsyncClient) -> None:
    app = keyed_client._transport.app  # type: ignore[attr-defined]
    settings = app.state.settings
    assert API_KEY not in repr(settings)
    assert API_KEY not in str(settings.model_dump())
    assert settings.load_api_keys() == [API_KEY]
