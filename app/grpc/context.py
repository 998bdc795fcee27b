"""The one place where a call's incoming metadata becomes its context: request id, routing key, credentials.

Every RPC enters through :func:`call_context` (``app.grpc.service``), as every HTTP request enters through
``RequestContextMiddleware``: what a tracer needs of the metadata (``traceparent``, ``tracestate``) is read here too.
"""

from __future__ import annotations

import contextvars
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from app.logs import request_id_var

REQUEST_ID_KEY = "x-request-id"  # as HTTP's X-Request-Id: the client's if sane, else a new one
TRACEPARENT_KEY = "traceparent"  # W3C trace context (issue #27), as over HTTP; tracestate travels with it
TRACE_KEYS = frozenset((TRACEPARENT_KEY, "tracestate"))
ROUTING_KEY_KEY = "x-routing-key"  # as HTTP's X-Routing-Key: keeps a client on one variant of a split
AUTHORIZATION_KEY = "authorization"
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # the same rule as HTTP's request ids

MetadataItems = Iterable[tuple[str, str | bytes]]


@dataclass(slots=True)
class CallContext:
    """What an RPC's metadata says about the call, read once."""

    request_id: str
    routing_key: str | None
    authorization: str | None
    trace_carrier: dict[str, str]  # the caller's traceparent/tracestate, for app.tracing (empty when it sent none)
    token: contextvars.Token[str | None]  # the request id's, reset when the call ends

    def close(self) -> None:
        request_id_var.reset(self.token)


def _text(value: str | bytes) -> str | None:
    """A text value; a binary (``-bin``) one is not text and is ignored."""
    return value if isinstance(value, str) else None


def call_context(metadata: MetadataItems | None) -> CallContext:
    """Read the call's metadata and enter its context (the request id logs and the engine see); the caller closes it.

    Keys arrive lowercase (HTTP/2 header names); a key given twice counts once, its first value.
    """
    request_id = routing_key = authorization = None
    carrier: dict[str, str] = {}
    seen: set[str] = set()
    for key, value in metadata or ():
        if key in seen:
            continue
        seen.add(key)
        if key == REQUEST_ID_KEY:
            text = _text(value)
            request_id = text if text is not None and _CLIENT_ID.match(text) else None
        elif key == ROUTING_KEY_KEY:
            routing_key = _text(value)
        elif key == AUTHORIZATION_KEY:
            authorization = _text(value)
        elif key in TRACE_KEYS and isinstance(value, str):
            carrier[key] = value
    request_id = request_id or uuid.uuid4().hex
    return CallContext(request_id, routing_key, authorization, carrier, request_id_var.set(request_id))
