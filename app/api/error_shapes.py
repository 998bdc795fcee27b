"""Each protocol's error body, chosen by the router that owns the route, never by the path.

The native API answers ``{"error": {"type", "message", "details"?}}``; the Open Inference Protocol answers
``{"error": "<message>"}`` and 400 for malformed requests. A router picks its shape with ``route_class``
(:class:`OipRoute`); a router that owns a whole namespace declares it (:class:`Namespace`) so that paths it has no route
for (404) answer in its shape, and so do middleware's answers (401, 413), given before routing runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send


@dataclass(frozen=True, slots=True)
class ErrorShape:
    name: str
    validation_status: int  # the status of a request the schema refuses
    detailed: bool  # the native body carries type and details; the protocol's a message only

    def body(self, error_type: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        if not self.detailed:
            return {"error": message}
        error: dict[str, Any] = {"type": error_type, "message": message}
        if details:
            error["details"] = details
        return {"error": error}


NATIVE = ErrorShape("native", validation_status=422, detailed=True)
OIP = ErrorShape("open_inference", validation_status=400, detailed=False)


class OipRoute(APIRoute):
    """A route of the Open Inference Protocol: its errors take the protocol's shape."""

    error_shape: ClassVar[ErrorShape] = OIP


@dataclass(frozen=True, slots=True)
class Namespace:
    """The paths a protocol's router owns (every one under ``prefix``), so that answers given where none of its routes
    matched (404, or middleware's 401 and 413) take its shape too."""

    prefix: str
    error_shape: ErrorShape

    def claims(self, scope: Scope) -> bool:
        path: str = scope.get("path", "")
        root_path: str = scope.get("root_path", "")
        if root_path and path.startswith(root_path):  # behind a proxy's prefix, as the router sees it
            path = path[len(root_path) :]
        prefix = self.prefix.rstrip("/")
        return path == prefix or path.startswith(prefix + "/")


def route_shape(scope: Scope) -> ErrorShape:
    """The shape of the route (or namespace) the router chose for this request; the native one when none."""
    shape: ErrorShape = getattr(scope.get("route"), "error_shape", NATIVE)
    return shape


class Namespaces:
    """The protocol namespaces of an app: the router's 404 for unmatched paths, and the shape for middleware."""

    def __init__(self, *namespaces: Namespace) -> None:
        self.namespaces = namespaces

    def claiming(self, scope: Scope) -> Namespace | None:
        return next((namespace for namespace in self.namespaces if namespace.claims(scope)), None)

    def shape_for(self, scope: Scope) -> ErrorShape:
        """For answers given before routing runs: the route's shape if one was chosen, else the claiming
        namespace's, else the native one."""
        if "route" in scope:
            return route_shape(scope)
        namespace = self.claiming(scope)
        return namespace.error_shape if namespace is not None else NATIVE

    async def not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The router's ``default`` (after its trailing-slash redirect found nothing): 404 in the owner's shape."""
        namespace = self.claiming(scope)
        if namespace is not None:
            scope["route"] = namespace
        raise HTTPException(404)
