"""The web pages' routes and access rules, in process (the browser tests drive the same pages in Chromium)."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.routes import pages
from app.api.security import ApiKeyMiddleware

KEY = "unit-key-0123456789"


def build(api_keys: bool, public_docs: bool = True) -> FastAPI:
    app = FastAPI(title="xnli-serve", version="0", docs_url=None, redoc_url=None)
    pages.install_pages(app, api_keys=api_keys)
    if api_keys:
        app.add_middleware(ApiKeyMiddleware, keys=[KEY], public_docs=public_docs)
    return app


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(build(api_keys=False)) as test_client:
        yield test_client


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_load_their_assets_from_the_service(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", response.text)
    assert urls, response.text
    assert all(url.startswith("/") for url in urls), urls
    for url in urls:
        assert client.get(url).status_code == 200, url


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_cannot_be_framed_and_run_only_their_own_scripts(client: TestClient, path: str) -> None:
    response = client.get(path)
    policy = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy
    assert "'unsafe-inline'" not in policy.split("script-src", 1)[1].split(";", 1)[0]
    for script in re.findall(r"<script>(.*?)</script>", response.text, re.DOTALL):  # inline: allowed by its hash
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy


def test_redoc_may_not_fetch_its_vendors_logo(client: TestClient) -> None:
    policy = client.get("/redoc").headers["content-security-policy"]
    assert "img-src 'self' data:;" in policy


@pytest.mark.parametrize(
    ("accept", "status", "location"),
    [
        pytest.param("text/html,application/xhtml+xml,*/*;q=0.8", 307, "/playground", id="browser"),
        pytest.param("application/json", 200, None, id="client"),
    ],
)
def test_root_sends_browsers_to_the_playground(
    client: TestClient, accept: str, status: int, location: str | None
) -> None:
    response = client.get("/", headers={"Accept": accept}, follow_redirects=False)
    assert response.status_code == status
    assert response.headers.get("location") == location
    if status == 200:
        assert response.json()["playground"] == "/playground"
        assert response.json()["docs"] == "/docs"


def test_root_path_prefixes_every_link() -> None:
    with TestClient(build(api_keys=False), root_path="/nli") as prefixed:
        assert prefixed.get("/", headers={"Accept": "text/html"}, follow_redirects=False).headers["location"] == (
            "/nli/playground"
        )
        assert "url: '/nli/openapi.json'" in prefixed.get("/docs").text


def test_playground_runs_only_its_own_files(client: TestClient) -> None:
    response = client.get("/playground")
    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "<script>" not in response.text
    assert 'data-api-keys="off"' in response.text
    for asset in ("playground.js", "playground.css"):
        assert client.get(f"/static/playground/{asset}").status_code == 200


def test_playground_script_never_parses_text_as_html(client: TestClient) -> None:
    script = client.get("/static/playground/playground.js").text
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script


@pytest.mark.parametrize(
    ("path", "public_docs", "public"),
    [
        ("/", False, True),
        ("/playground", False, True),
        ("/static/playground/playground.js", False, True),
        ("/docs", True, True),
        ("/redoc", True, True),
        ("/static/docs/swagger-ui-bundle.js", True, True),
        ("/static/docs/redoc.standalone.js", True, True),
        ("/docs", False, False),
        ("/redoc", False, False),
        ("/static/docs/swagger-ui-bundle.js", False, False),
        ("/static/playgroundx/a.js", False, False),
    ],
)
def test_pages_follow_the_access_rules(path: str, public_docs: bool, public: bool) -> None:
    with TestClient(build(api_keys=True, public_docs=public_docs)) as secured:
        status = secured.get(path, headers={"Accept": "text/html"}, follow_redirects=False).status_code
        assert (status != 401) == public, status
        if not public:
            assert secured.get(path, headers={"Authorization": f"Bearer {KEY}"}).status_code in (200, 404)


def test_playground_shows_the_key_field_when_keys_are_on() -> None:
    with TestClient(build(api_keys=True)) as secured:
        assert 'data-api-keys="on"' in secured.get("/playground").text
