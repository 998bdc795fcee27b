"""The HTTP edge: what a connection may cost before it has earned a request.

uvicorn bounds none of this (its keep-alive timer starts only after a first response, httptools buffers header values
of any size, ``limit_concurrency`` still lets a connection in and keeps it until it speaks), so one client without a key
could hold every descriptor or gigabytes of header buffer. :class:`EdgeProtocol` is uvicorn's httptools protocol with:

* a **header deadline**: complete request headers within ``header_timeout_s`` of the connection opening (or of the
  first byte of a following request on a kept-alive connection), else 408 and close;
* a **body deadline**: no gap longer than ``body_timeout_s`` between body bytes, and, past that long, at least
  ``min_body_rate_bytes_s`` on average, else the connection closes (the app sees a disconnect). Time the app itself
  leaves the body unread (flow control paused) is not charged to the client;
* a **header size limit**: more than ``max_header_bytes`` before the headers end gets 431 and a close; nothing past the
  limit is fed to the parser, so it buffers at most the limit plus one read;
* a **write deadline**: a client that stops reading its answers (the server's send buffer full for
  ``write_timeout_s``) loses the connection, so it cannot hold a request slot by not reading;
* a **pipelining bound**: at most ``MAX_PIPELINED`` requests parked behind the one in progress; requests past it are
  not read, and the connection closes once the parked ones are answered (a pipelining client retries the rest);
* a **connection cap** per process (``max_connections``, and below the descriptor limit): a new connection beyond it
  evicts the connection that has waited longest without a request in flight (a slow or silent client, or an idle
  keep-alive one); when every connection carries a request, the newcomer gets 503 with ``Retry-After`` at once.

Every close is counted in ``xnli_http_connections_closed_total{reason}``.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import resource
import termios
import time
from asyncio import TimerHandle
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app import metrics
from app.api.error_shapes import NATIVE

DESCRIPTOR_RESERVE = 128  # descriptors kept for model files, pipes, sockets to the engine and logs
MAX_LINGERING = DESCRIPTOR_RESERVE // 2  # refused connections half-open at once; past it a refusal resets at once
MAX_PIPELINED = 16  # requests a connection may park behind the one in progress
CHECK_INTERVAL_S = 0.5  # how often a body in progress is checked for a stall or a crawl
LINGER_S = 1.0  # how long a refused connection stays half-closed for its answer to be read
LINGER_MAX_BYTES = 256 * 1024  # ... and how much more it may send meanwhile (read and dropped)
NEW_CONNECTION_GRACE_S = 1.0  # a connection younger than this is never evicted: its request may be unread yet
KEEP_ALIVE_GRACE_S = 2.0  # a kept-alive connection idle for less is never evicted: its client may be reusing it


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    header_timeout_s: float
    body_timeout_s: float
    min_body_rate_bytes_s: float
    max_header_bytes: int
    max_connections: int
    max_inflight_requests: int
    write_timeout_s: float


def connection_cap(configured: int, descriptor_limit: int | None = None) -> int:
    """The configured cap, lowered to leave ``DESCRIPTOR_RESERVE`` descriptors free: a cap above the process's
    descriptor limit would let accept() fail with EMFILE, and the kernel would then hold new connections unanswered."""
    if descriptor_limit is None:
        descriptor_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if descriptor_limit == resource.RLIM_INFINITY or descriptor_limit <= 0:
        return configured
    return max(1, min(configured, descriptor_limit - DESCRIPTOR_RESERVE))


def unread_bytes(transport: asyncio.BaseTransport) -> int:
    """Bytes the kernel holds for the connection that the event loop has not read yet (0 if it cannot tell)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    pending = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, pending, True)
    except OSError:
        return 0
    return pending[0]


def _waited(connection: EdgeProtocol) -> float:
    return connection._waiting_since


def _response(status: int, error_type: str, message: str, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 answer in the native error shape, written before (or instead of) the app."""
    body = orjson.dumps(NATIVE.body(error_type, message))
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
    ).encode("ascii")
    return head + extra + b"\r\n" + body


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, bounded as the module says. One instance per connection; timers are armed only
    when a request is actually partial, so a request that arrives in one read costs no timer."""

    limits: EdgeLimits  # set on the subclass that :func:`edge_protocol` makes
    shed_app: ASGI3Application  # ... and so is the answer to a request shed for overload
    lingering = 0  # refused connections of this process still half-open (shared by every connection)

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._awaiting_headers = True  # the parser is between requests or inside one's headers
        self._in_body = False  # ... or inside a body, answered or not (an early 401/413 leaves it unread)
        self._header_bytes = 0
        self._request_began = 0.0
        self._header_timer: TimerHandle | None = None
        self._body_timer: TimerHandle | None = None
        self._write_timer: TimerHandle | None = None
        self._body_started = 0.0
        self._body_bytes = 0
        self._last_body_byte = 0.0
        self._paused_since: float | None = None
        self._paused_total = 0.0
        self._waiting_since = time.monotonic()  # since when this connection carries no request (eviction order)
        self._served = False  # whether a response was completed on it (a kept-alive connection)
        self._closing = False
        self._draining_pipeline = False  # answer what is parked, read nothing more, then refuse or close
        self._deferred_refusal: tuple[int, str, str, str, bytes] | None = None  # ... the refusal it then sends
        self._discarded = 0

    # Connection life

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        over = len(self.connections) >= self.limits.max_connections
        super().connection_made(transport)
        if over and not self._make_room():
            message = (
                f"this process holds its limit of {self.limits.max_connections} connections, each with a request "
                "in progress; retry shortly"
            )
            self._refuse(503, "overloaded", message, "over_capacity", b"retry-after: 1\r\n")
            return
        self._request_began = self._waiting_since
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._on_header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def _make_room(self) -> bool:
        """Close one connection with no request in flight: the one that has waited longest without ever completing a
        request (silent, or dripping headers: what an attacker holds), else the kept-alive one idle longest. Never one
        whose bytes wait unread in the kernel (a loop busy for seconds has not read their requests yet), and only past
        a grace: a request may be on its way on a connection accepted a moment ago, or on a kept-alive one its client
        is reusing this instant; either would see its request reset. False if there is none."""
        now = time.monotonic()
        fresh: list[EdgeProtocol] = []
        kept: list[EdgeProtocol] = []
        for connection in self.connections:
            if isinstance(connection, EdgeProtocol) and connection is not self and connection._evictable():
                if not connection._served and now - connection._waiting_since >= NEW_CONNECTION_GRACE_S:
                    fresh.append(connection)
                elif connection._served and now - connection._waiting_since >= KEEP_ALIVE_GRACE_S:
                    kept.append(connection)
        oldest_first = sorted(fresh, key=_waited) + sorted(kept, key=_waited)
        for candidate in oldest_first:
            if unread_bytes(candidate.transport) == 0:  # else its request is there, unread by a busy loop
                candidate._close("evicted", abort=True)  # owed nothing; close() could wait on a client that never reads
                return True
        return False

    def _evictable(self) -> bool:
        """No request in progress, and no answer still in the buffer (complete for uvicorn, unsent to the client)."""
        return (
            not self._closing
            and self._awaiting_headers
            and (self.cycle is None or self.cycle.response_complete)
            and self.transport.get_write_buffer_size() == 0
        )

    def _close(self, reason: str, abort: bool = False) -> None:
        if self._closing and not self._draining_pipeline:
            return
        self._closing = True
        self._draining_pipeline = False
        self._cancel_timers()
        metrics.HTTP_CONNECTIONS_CLOSED.labels(reason).inc()
        if abort:
            self.transport.abort()
        elif not self.transport.is_closing():
            self.transport.close()

    def _refuse(self, status: int, error_type: str, message: str, reason: str, extra: bytes = b"") -> None:
        """Answer, half-close, and close after a short linger: closing at once with the client's bytes unread would
        send a reset, which can destroy the answer before the client reads it. What arrives meanwhile is dropped.
        While an earlier request's answer is still due, the refusal waits for it (and for any parked behind it)."""
        if self._closing or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._deferred_refusal = (status, error_type, message, reason, extra)
            self._stop_reading()
            return
        self.transport.write(_response(status, error_type, message, extra))
        self._closing = True
        self._cancel_timers()
        metrics.HTTP_CONNECTIONS_CLOSED.labels(reason).inc()
        cls = type(self)
        if cls.lingering >= MAX_LINGERING or not self.transport.can_write_eof():
            # Lingering holds a descriptor each; a flood of refusals must not eat the reserve the cap keeps free.
            self.transport.close()
            return
        self.transport.write_eof()
        cls.lingering += 1

        def close() -> None:
            cls.lingering -= 1
            self.transport.abort()  # its answer had LINGER_S to be read; a client that did not read it gets a reset

        self.loop.call_later(LINGER_S, close)

    def _stop_reading(self) -> None:
        """Parse nothing more (reading paused where uvicorn allows, the rest dropped unparsed): answer the requests
        already taken (in flight and parked), then close or refuse."""
        self._closing = self._draining_pipeline = True
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self.flow.pause_reading()

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = self._write_timer = None

    # Answers

    def pause_writing(self) -> None:
        """The transport's buffer is full: the client is not reading. It has ``write_timeout_s`` to start again."""
        super().pause_writing()
        if self._write_timer is None and not self.transport.is_closing():
            self._write_timer = self.loop.call_later(self.limits.write_timeout_s, self._on_write_timeout)

    def resume_writing(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().resume_writing()

    def _on_write_timeout(self) -> None:
        self._write_timer = None
        if not self.transport.is_closing():
            self._close("write_timeout", abort=True)  # close() would wait for the unread answer forever

    # Headers

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if not self._awaiting_headers or self._closing:
            return
        message = f"request headers were not complete within {self.limits.header_timeout_s:g} s"
        self._refuse(408, "request_timeout", message, "header_timeout")

    def _headers_too_large(self) -> None:
        message = f"request headers exceed {self.limits.max_header_bytes} bytes"
        self._refuse(431, "headers_too_large", message, "headers_too_large")

    def data_received(self, data: bytes) -> None:
        if self._closing:  # a refused connection lingers: what it still sends is dropped, up to a bound
            self._discarded += len(data)
            if self._draining_pipeline:
                return  # dropped unparsed, without the linger bound: the answers still due must go out
            if self._discarded > LINGER_MAX_BYTES and not self.transport.is_closing():
                self.transport.close()
            return
        if self._awaiting_headers:
            if self._header_bytes == 0 and self._header_timer is None:
                self._request_began = time.monotonic()  # a kept-alive connection starts its next request
            self._header_bytes += len(data)
        super().data_received(data)
        if self._closing or self.transport.is_closing():
            return
        if self._awaiting_headers:
            if self._header_bytes > self.limits.max_header_bytes:
                self._headers_too_large()
            elif self._header_bytes and self._header_timer is None:  # partial headers: bound the wait for the rest
                left = self.limits.header_timeout_s - (time.monotonic() - self._request_began)
                self._header_timer = self.loop.call_later(max(0.0, left), self._on_header_timeout)
        elif self._in_body:
            self._last_body_byte = time.monotonic()
            if self._body_timer is None:  # a partial body: watch it for a stall or a crawl
                self._body_timer = self.loop.call_later(CHECK_INTERVAL_S, self._check_body)

    def on_url(self, url: bytes) -> None:
        if not self._closing:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._closing:
            super().on_header(name, value)

    def on_message_begin(self) -> None:
        if not self._closing:
            super().on_message_begin()

    def on_headers_complete(self) -> None:
        if self._closing:
            return
        if len(self.pipeline) >= MAX_PIPELINED:
            # Not read: parked requests hold memory and no slot counts them. Answer those parked, then close.
            self._stop_reading()
            return
        # Headers that arrived whole in one read were counted with the body after them; count them exactly here.
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._headers_too_large()
            return
        self._awaiting_headers = False
        self._in_body = True
        self._header_bytes = 0
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._body_started = self._last_body_byte = time.monotonic()
        self._body_bytes = 0
        self._paused_since = None
        self._paused_total = 0.0
        if len(self.tasks) >= self.limits.max_inflight_requests and not _exempt(self.url):
            # Shed here, before routing and validation: the answer costs a fraction of a served request, so an
            # event loop that is itself the bottleneck keeps up with what arrives. The request's body, if any, is
            # read and dropped by uvicorn, and the connection stays usable.
            served_by, self.app = self.app, self.shed_app
            try:
                super().on_headers_complete()
            finally:
                self.app = served_by
            return
        super().on_headers_complete()

    # Body

    def on_body(self, body: bytes) -> None:
        if not self._closing:
            self._body_bytes += len(body)
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if self._closing:
            return
        # Only now is the parser between requests: after an early answer (401, 413, 429) the body was still coming.
        self._in_body = False
        self._awaiting_headers = True
        self._header_bytes = 0
        super().on_message_complete()

    def _check_body(self) -> None:
        """A stalled body (no byte for ``body_timeout_s``) or a crawling one (under ``min_body_rate_bytes_s`` on
        average once ``body_timeout_s`` has passed) closes the connection; paused reading is the app's time."""
        self._body_timer = None
        if self._closing or not self._in_body:
            return
        now = time.monotonic()
        if self.flow.read_paused:
            if self._paused_since is None:
                self._paused_since = now
        else:
            if self._paused_since is not None:
                self._paused_total += now - self._paused_since
                self._last_body_byte = now  # the client's wait starts again when reading resumes
                self._paused_since = None
            limit = self.limits.body_timeout_s
            stalled = now - self._last_body_byte > limit
            elapsed = now - self._body_started - self._paused_total
            crawling = elapsed > limit and self._body_bytes < self.limits.min_body_rate_bytes_s * elapsed
            if stalled or crawling:
                self._close("body_timeout")
                return
        self._body_timer = self.loop.call_later(CHECK_INTERVAL_S, self._check_body)

    # Between requests

    def on_response_complete(self) -> None:
        self._served = True
        self._waiting_since = time.monotonic()
        last = not self.pipeline  # else uvicorn now starts the next parked request
        super().on_response_complete()
        if not self._draining_pipeline or self.transport.is_closing():
            return
        self.flow.pause_reading()  # uvicorn resumed it (an app reading its body resumes it too: then data is dropped)
        if not last:
            return
        if self._deferred_refusal is not None:  # every request taken before it is answered: the refusal's turn
            refusal, self._deferred_refusal = self._deferred_refusal, None
            self._closing = self._draining_pipeline = False
            self._refuse(*refusal)
        else:
            self._close("pipeline_limit")  # every parked request answered; the ones past the bound were never read


# Probes and scrapes are never shed: an orchestrator must see a busy process as alive and ready, and Prometheus must
# see the overload it is in.
_NEVER_SHED = (b"/health/", b"/v2/health/", b"/metrics")


def _exempt(url: bytes) -> bool:
    path = url.split(b"?", 1)[0]
    return path.startswith(_NEVER_SHED[:2]) or path == _NEVER_SHED[2]


class ShedApp:
    """The ASGI answer to a request shed at the edge: 429 ``overloaded`` with ``Retry-After``, counted as such."""

    def __init__(self, limit: int) -> None:
        self.body = orjson.dumps(
            NATIVE.body(
                "overloaded",
                f"this process is handling its limit of {limit} requests at once; retry after 1 s",
            )
        )

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        metrics.REQUESTS.labels(metrics.UNKNOWN_VARIANT, metrics.Outcome.OVERLOADED).inc()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.body)).encode()),
            (b"retry-after", b"1"),
        ]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def edge_protocol(limits: EdgeLimits) -> type[EdgeProtocol]:
    """A protocol class bound to ``limits``: uvicorn builds each connection's protocol from a class alone."""
    return type(
        "BoundEdgeProtocol", (EdgeProtocol,), {"limits": limits, "shed_app": ShedApp(limits.max_inflight_requests)}
    )
