"""Web pages served by the service itself, with no request leaving it: API docs and the variant playground.

Swagger UI and ReDoc come from the ``fastapi-offline`` package, which ships their bundles; the playground is plain
HTML/CSS/JS in ``app/api/static``. Access rules for these paths live in ``app.api.security``.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

DOCS_URL = "/docs"
DOCS_OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
REDOC_URL = "/redoc"
DOCS_ASSETS_URL = "/static/docs"
PLAYGROUND_URL = "/playground"
PLAYGROUND_ASSETS_URL = "/static/playground"

# The playground runs only its own script and talks only to this service; inline markup cannot run code.
PLAYGROUND_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# ReDoc's sidebar shows a logo fetched from its vendor's CDN; the policy keeps the browser from even trying (the
# image hides itself when it cannot load). Its styled components inject <style> tags; its search runs in a worker.
REDOC_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)
API_KEYS_MARKER = 'data-api-keys="off"'

router = APIRouter(include_in_schema=False)


def _prefix(request: Request) -> str:
    root_path: str = request.scope.get("root_path", "")
    return root_path.rstrip("/")


@router.get("/")
async def index(request: Request) -> Response:
    """Browsers go to the playground; other clients get where things are."""
    prefix = _prefix(request)
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse(f"{prefix}{PLAYGROUND_URL}", status_code=307)
    return JSONResponse(
        {
            "service": request.app.title,
            "version": request.app.version,
            "playground": f"{prefix}{PLAYGROUND_URL}",
            "docs": f"{prefix}{DOCS_URL}",
            "redoc": f"{prefix}{REDOC_URL}",
            "openapi": f"{prefix}{request.app.openapi_url}",
            "variants": f"{prefix}/variants",
        }
    )


@router.get(PLAYGROUND_URL)
async def playground(request: Request) -> Response:
    html: str = request.app.state.playground_html
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": PLAYGROUND_CSP,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def swagger_csp(page: str) -> str:
    """Swagger UI's policy: its own assets only, its one inline start-up script allowed by hash (the page is built per
    request: the script names the schema's URL, behind a proxy's prefix too), never framed."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(page)
    )
    return (
        f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "font-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


@router.get(DOCS_URL)
async def swagger_ui(request: Request) -> HTMLResponse:
    prefix = _prefix(request)
    page = get_swagger_ui_html(
        openapi_url=f"{prefix}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        oauth2_redirect_url=f"{prefix}{DOCS_OAUTH2_REDIRECT_URL}",
        swagger_js_url=f"{prefix}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{prefix}{DOCS_ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{prefix}{DOCS_ASSETS_URL}/favicon.png",
        # No online validator badge: it would send the schema's URL to a public service.
        swagger_ui_parameters={"validatorUrl": None},
    )
    page.headers["Content-Security-Policy"] = swagger_csp(bytes(page.body).decode())
    return page


@router.get(DOCS_OAUTH2_REDIRECT_URL)
async def swagger_ui_oauth2_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get(REDOC_URL)
async def redoc(request: Request) -> HTMLResponse:
    prefix = _prefix(request)
    page = get_redoc_html(
        openapi_url=f"{prefix}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{prefix}{DOCS_ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{prefix}{DOCS_ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )
    page.headers["Content-Security-Policy"] = REDOC_CSP
    return page


def playground_html(api_keys: bool) -> str:
    """The page, told whether to show the API key field from the start (it also shows it on any 401)."""
    html = resources.files("app.api").joinpath("static", "playground.html").read_text(encoding="utf-8")
    if API_KEYS_MARKER not in html:
        raise RuntimeError(f"playground.html lost its {API_KEYS_MARKER} marker")
    return html.replace(API_KEYS_MARKER, 'data-api-keys="on"') if api_keys else html


def install_pages(app: FastAPI, api_keys: bool) -> None:
    """Serve the docs, the playground and their assets; the app must be built with docs_url=redoc_url=None."""
    app.state.playground_html = playground_html(api_keys)
    app.mount(DOCS_ASSETS_URL, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")
    app.mount(PLAYGROUND_ASSETS_URL, StaticFiles(packages=[("app.api", "static/playground")]), name="playground-assets")
    app.include_router(router)
