"""Every error leaves as JSON with a 4xx/5xx status, in the shape of the protocol whose router owns the route
(``app.api.error_shapes``); clients never see HTML."""

from __future__ import annotations

import math
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.api.error_shapes import NATIVE, ErrorShape, route_shape
from app.service.errors import ErrorKind, Failure, failure_of

CLIENT_CLOSED = 499  # nginx's code for "the client went away first"; logged, never seen by a client

# What HTTP answers each kind of failure with; the kinds themselves, their codes, messages and retry hints are the
# service's (``app.service.errors``). A transport adds a table like this one and nothing else.
HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID_ARGUMENT: 400,
    ErrorKind.LOAD_FAILED: 400,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.BUSY: 409,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.INVALID_QUERY: 422,
    ErrorKind.TOO_LONG: 422,
    ErrorKind.DEADLINE_TOO_SHORT: 422,
    ErrorKind.OVERLOADED: 429,
    ErrorKind.DISCONNECTED: CLIENT_CLOSED,
    ErrorKind.INFERENCE_FAILED: 500,
    ErrorKind.INTERNAL: 500,
    ErrorKind.NOT_READY: 503,
    ErrorKind.DRAINING: 503,
    ErrorKind.DEADLINE_EXCEEDED: 503,
}
_CLOSES_CONNECTION = frozenset({ErrorKind.DRAINING})  # a draining process wants its keep-alive connections back


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        headers: dict[str, str] | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = headers or {}
        self.details = details


def error_response(error: ApiError, shape: ErrorShape = NATIVE) -> Response:
    return Response(
        orjson.dumps(shape.body(error.error_type, error.message, error.details)),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers,
    )


def first_problem(error: ValidationError) -> str:
    """``where: what`` of a hand-parsed body's first validation error (protocol bodies answer one message)."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def from_failure(failure: Failure) -> ApiError:
    """A failure as HTTP answers it: the kind's status, ``Retry-After`` in whole seconds (rounded up)."""
    headers: dict[str, str] = {}
    if failure.kind in _CLOSES_CONNECTION:
        headers["Connection"] = "close"
    if failure.retry_after_s is not None:
        headers["Retry-After"] = str(math.ceil(failure.retry_after_s))
    return ApiError(HTTP_STATUS[failure.kind], failure.code, failure.message, headers, failure.details)


def from_engine(error: BaseException) -> ApiError:
    """Translate engine and service exceptions (which know nothing of HTTP) into API errors."""
    return from_failure(failure_of(error))


_STATUS_TYPES = {
    400: "invalid_body",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _validation_details(error: RequestValidationError) -> list[dict[str, Any]]:
    details = []
    for item in error.errors():
        location = [str(part) for part in item.get("loc", ())]
        if location[:1] == ["body"]:
            location = location[1:]
        if location[:1] in (["pair"], ["pairs"]):  # the tag of the body form chosen, not a field
            location = location[1:]
        details.append({"loc": location, "msg": item.get("msg", ""), "type": item.get("type", "")})
    return details


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> Response:
        return error_response(error, route_shape(request.scope))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> Response:
        details = _validation_details(error)
        summary = "; ".join(f"{'.'.join(d['loc']) or 'body'}: {d['msg']}" for d in details[:5])
        shape = route_shape(request.scope)
        api_error = ApiError(
            shape.validation_status, "validation_error", f"invalid request: {summary}", details=details
        )
        return error_response(api_error, shape)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
        error_type = _STATUS_TYPES.get(error.status_code, "http_error")
        api_error = ApiError(error.status_code, error_type, str(error.detail), headers=dict(error.headers or {}))
        return error_response(api_error, route_shape(request.scope))
