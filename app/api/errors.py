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
from app.engine.errors import (
    DeadlineExceededError,
    DeadlineTooShortError,
    DrainingError,
    InferenceError,
    InputTooLongError,
    OverloadedError,
    RepositoryBusyError,
    RequestTooLargeError,
    UnknownVariantError,
    VariantLoadError,
    VariantNotReadyError,
)
from app.service.prediction import InvalidQueryError, TooManyPairsError


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


def from_engine(error: Exception) -> ApiError:
    """Translate engine and service exceptions (which know nothing of HTTP) into API errors."""
    if isinstance(error, UnknownVariantError):
        return ApiError(404, "unknown_variant", str(error))
    if isinstance(error, TooManyPairsError):
        return ApiError(413, "too_many_pairs", str(error))
    if isinstance(error, InvalidQueryError):
        return ApiError(422, "invalid_request", str(error))
    if isinstance(error, VariantNotReadyError):
        return ApiError(503, "not_ready", str(error), headers={"Retry-After": "5"})
    if isinstance(error, InputTooLongError):
        return ApiError(
            422,
            "input_too_long",
            str(error),
            details=[{"pair": error.pair_index, "tokens": error.length, "limit": error.limit}],
        )
    if isinstance(error, RequestTooLargeError):
        return ApiError(413, "too_many_pairs", str(error), details=[{"limit": error.limit}])
    if isinstance(error, DeadlineTooShortError):
        return ApiError(
            422, "deadline_too_short", str(error), details=[{"minimum_ms": round(error.minimum_s * 1000, 3)}]
        )
    if isinstance(error, OverloadedError):
        return ApiError(429, "overloaded", str(error), headers={"Retry-After": str(math.ceil(error.retry_after_s))})
    if isinstance(error, DeadlineExceededError):
        return ApiError(503, "deadline_exceeded", str(error))
    if isinstance(error, DrainingError):
        return ApiError(503, "draining", str(error), headers={"Connection": "close", "Retry-After": "1"})
    if isinstance(error, InferenceError):
        return ApiError(500, "inference_error", str(error))
    if isinstance(error, VariantLoadError):
        return ApiError(500 if error.server_fault else 400, "load_failed", str(error))
    if isinstance(error, RepositoryBusyError):
        return ApiError(409, "busy", str(error), headers={"Retry-After": "1"})
    return ApiError(500, "internal_error", f"{type(error).__name__}: {error}")


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
