"""Request ids, access logs, refusal counting and the body limit as pure ASGI middleware (no per-request task or
body buffering)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

import orjson
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import accounting
from app.api.accounting import CLIENT_CLOSED
from app.api.error_shapes import NATIVE, ErrorShape
from app.logs import request_id_var
from app.tracing import STATE, propagation

__all__ = ["CLIENT_CLOSED", "BodyLimitMiddleware", "RequestContextMiddleware", "ShapeOf", "send_json_error"]

access_log = logging.getLogger("xnli_serve.access")
ShapeOf = Callable[[Scope], ErrorShape]  # the error shape of the router a request is for (app.api.error_shapes)


def native_shape(scope: Scope) -> ErrorShape:
    return NATIVE


async def send_json_error(
    send: Send,
    status: int,
    error_type: str,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    shape: ErrorShape = NATIVE,
) -> None:
    """Answer from ASGI middleware, below FastAPI's handlers, in the error shape of the request's router."""
    body = orjson.dumps(shape.body(error_type, message))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContextMiddleware:
    """Gives every request an id (the client's ``X-Request-Id`` if sane), echoes it, logs one line per request,
    counts refusals the prediction service never saw (``app.api.accounting``), and turns any unexpected exception
    into a JSON 500 so that an accepted request always gets an answer."""

    def __init__(self, app: ASGIApp, shape_of: ShapeOf = native_shape) -> None:
        self.app = app
        self.shape_of = shape_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                request_id = candidate if _CLIENT_ID.match(candidate) else None
                break
        request_id = request_id or uuid.uuid4().hex
        accounting.begin(scope)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
                accounting.count_refusal(
                    scope, status
                )  # before the client has its answer, so a scrape after it sees it
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            # The client left while its body was being read (or was cut off at the body limit, already answered
            # 413): nobody waits for an answer, and it is not a fault of the service.
            if not response_started:
                status = CLIENT_CLOSED
            access_log.info(
                "client left before its request body was read: %s %s", scope.get("method"), scope.get("path")
            )
        except Exception:
            access_log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not response_started:
                shape = self.shape_of(scope)
                await send_json_error(send_with_id, 500, "internal_error", "internal server error", shape=shape)
        finally:
            if not response_started:  # the client left first: there was no answer to count on its way out
                accounting.count_refusal(scope, status)
            if scope.get("path") not in ("/metrics", "/health/live", "/health/ready"):
                access_log.info(
                    "%s %s %d",
                    scope.get("method"),
                    scope.get("path"),
                    status,
                    extra={"status": status, "duration_ms": round((time.perf_counter() - started) * 1000, 3)},
                )
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """413 for bodies over the limit: at once from Content-Length, or as soon as a chunked body passes it."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, shape_of: ShapeOf = native_shape) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.shape_of = shape_of

    async def _refuse(self, scope: Scope, send: Send) -> None:
        message = f"request body over {self.max_body_bytes} bytes"
        shape = self.shape_of(scope)
        await send_json_error(send, 413, "payload_too_large", message, [(b"connection", b"close")], shape)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_body_bytes:
                    await self._refuse(scope, send)
                    return
        received = 0
        refused = False

        async def counting_receive() -> Message:
            # Past the limit the client is answered 413 here and the app is told the client left, so whatever
            # the app makes of the truncated body is never sent.
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    refused = True
                    await self._refuse(scope, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counting_receive, guarded_send)


# -- Tracing (issue #27) -------------------------------------------------------------------------------------------
# Added by create_app only while tracing is on (app.tracing), outermost, so its span covers every other middleware's
# answer (401, 413, 500) and the status the client really got.

_TRACE_HEADERS = (b"traceparent", b"tracestate")


class TracingMiddleware:
    """A server span per HTTP request, in the caller's W3C trace context (``traceparent``/``tracestate``) when it
    sent one; the response carries ``traceparent`` naming that span, beside ``X-Request-Id``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope.get("headers", ())
            if name in _TRACE_HEADERS
        }
        method = scope.get("method", "GET")
        span = STATE.tracer.start_span(
            method,
            context=propagation.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope.get("path", "")},
        )
        token = context.attach(trace.set_span_in_context(span))
        header = propagation.traceparent(span)
        status = 500

        async def send_traced(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                for name, value in headers:
                    if name == b"x-request-id":
                        span.set_attribute("xnli.request_id", value.decode("latin-1"))
                if header is not None:
                    headers.append((b"traceparent", header.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_traced)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None)
            if template is not None:
                span.update_name(f"{method} {template}")
                span.set_attribute("http.route", template)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            context.detach(token)
            span.end()
