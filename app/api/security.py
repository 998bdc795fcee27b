"""Optional API-key authentication (``Authorization: Bearer <key>``), as a pure ASGI middleware.

The check itself (digests, constant-time comparison) is transport-neutral and shared with gRPC:
``app.service.auth`` (issue #26).
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.middleware import ShapeOf, native_shape, send_json_error
from app.api.routes import pages
from app.service.auth import INVALID_KEY, MISSING_KEY, ApiKeys

DOCS_PATHS = (pages.DOCS_URL, pages.DOCS_OAUTH2_REDIRECT_URL, pages.REDOC_URL, "/openapi.json")
DOCS_PREFIXES = (pages.DOCS_ASSETS_URL + "/",)
# The playground page and its assets hold no data (always public, so a browser can open it and type a key); the
# API calls it makes need the key like any other client's.
PAGE_PATHS = ("/", pages.PLAYGROUND_URL)
PAGE_PREFIXES = (pages.PLAYGROUND_ASSETS_URL + "/",)
HEALTH_PREFIXES = ("/health/",)


class ApiKeyMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        keys: Iterable[str],
        public_health: bool = True,
        public_metrics: bool = True,
        public_docs: bool = True,
        shape_of: ShapeOf = native_shape,
    ) -> None:
        self.app = app
        self.shape_of = shape_of
        keys = list(keys)
        if not keys:
            raise ValueError("ApiKeyMiddleware needs at least one key")
        self._keys = ApiKeys(keys)
        self._public_exact = (
            set(PAGE_PATHS) | set(DOCS_PATHS if public_docs else ()) | ({"/metrics"} if public_metrics else set())
        )
        self._public_prefixes = (
            PAGE_PREFIXES + (DOCS_PREFIXES if public_docs else ()) + (HEALTH_PREFIXES if public_health else ())
        )

    def is_public(self, path: str) -> bool:
        return path in self._public_exact or path.startswith(self._public_prefixes)

    def authorized(self, header: bytes | None) -> bool:
        return self._keys.authorized(None if header is None else header.decode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # No exemption for OPTIONS: CORS preflights are answered by CORSMiddleware, which runs before this one
        # when origins are configured; any other OPTIONS request needs a key like every other method.
        if scope["type"] != "http" or self.is_public(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        header = next((value for name, value in scope.get("headers", ()) if name == b"authorization"), None)
        if self.authorized(header):
            await self.app(scope, receive, send)
            return
        missing = header is None
        message = MISSING_KEY if missing else INVALID_KEY
        challenge = b'Bearer realm="xnli-serve"' if missing else b'Bearer realm="xnli-serve", error="invalid_token"'
        headers = [(b"www-authenticate", challenge)]
        await send_json_error(send, 401, "unauthorized", message, headers, self.shape_of(scope))
