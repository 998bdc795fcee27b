"""The spans of the service's phases, for callers that already checked ``STATE.active``.

Phases are recorded after the fact from the ``perf_counter`` readings the engine takes anyway (admission, tokenization,
queue wait): a phase costs nothing until its request turns out to be sampled. Only the engine's request span is
started live, because the device batches that serve a request need its context while it waits.

A device batch serves several requests: its span is a child of the first sampled request it served and links to the
others, and every request's queue-wait span links to each batch that carried its pairs (OpenTelemetry span links).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from app.tracing.runtime import STATE, perf_to_ns

Attributes = Mapping[str, AttributeValue]


class RequestTrace:
    """A sampled request inside the engine: its span, what its device batches are labelled with (backend, device),
    and the contexts of the batches that served it (appended by the thread that answers batches, read once the
    request is answered)."""

    __slots__ = ("batch_attributes", "batch_started", "batches", "context", "span")

    def __init__(self, span: Span, batch_attributes: Attributes) -> None:
        self.span = span
        self.context = span.get_span_context()
        self.batch_attributes = batch_attributes
        self.batches: list[SpanContext] = []
        self.batch_started = 0.0  # when the last batch that served it began: its queue wait ends there


def start_span(
    name: str,
    attributes: Attributes,
    parent: Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    links: Sequence[Link] = (),
) -> Span | None:
    """A live span in ``parent`` (the current context by default), or None when it is not sampled (then nothing
    more is recorded for it). A parent that is not sampled settles it at once: no span object is made."""
    outer = trace.get_current_span(parent).get_span_context()
    if outer.is_valid and not outer.trace_flags.sampled:
        return None
    span = STATE.tracer.start_span(name, context=parent, kind=kind, attributes=attributes, links=links)
    if span.is_recording():
        return span
    span.end()
    return None


def record(
    parent: Span | SpanContext,
    name: str,
    start: float,
    end: float,
    attributes: Attributes | None = None,
    links: Sequence[SpanContext] = (),
    error: str | None = None,
) -> SpanContext:
    """A finished child span of ``parent`` from two ``perf_counter`` readings; ``error`` marks it failed."""
    if isinstance(parent, SpanContext):
        parent = trace.NonRecordingSpan(parent)
    span = STATE.tracer.start_span(
        name,
        context=trace.set_span_in_context(parent),
        start_time=perf_to_ns(start),
        attributes=attributes,
        links=[Link(link) for link in links],
    )
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=perf_to_ns(end))
    return span.get_span_context()


def record_batch(traces: Sequence[RequestTrace], start: float, end: float, attributes: Attributes) -> None:
    """One device batch that served ``traces`` (its sampled requests): a child of the first, linked to the others,
    and remembered by each so its queue-wait span links back."""
    first = traces[0]
    others = [other.context for other in traces[1:]]
    batch = record(first.context, "device batch", start, end, {**first.batch_attributes, **attributes}, others)
    for request in traces:
        request.batches.append(batch)
        request.batch_started = start


def end(span: Span, error: str | None = None, at: float | None = None) -> None:
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=None if at is None else perf_to_ns(at))


@contextmanager
def request_span(name: str, kind: SpanKind = SpanKind.SERVER) -> Iterator[Span]:
    """The span a request's attributes go on: the transport's server span when one is current (HTTP, and gRPC once
    it opens one; attributes on an unsampled one cost nothing), else a span of its own, current while the request
    runs."""
    current = trace.get_current_span()
    found = current.get_span_context()
    if found.is_valid and not found.is_remote:  # a remote one is only the caller's context: this span is its child
        yield current
        return
    span = STATE.tracer.start_span(name, kind=kind)
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield span
    finally:
        otel_context.detach(token)
        span.end()


@contextmanager
def server_span(name: str, carrier: Mapping[str, str], attributes: Attributes | None = None) -> Iterator[Span]:
    """For a transport (gRPC): the server span of one call, in the caller's W3C context read from ``carrier`` (its
    metadata), current while the call runs; ``propagation.traceparent(span)`` is what to send back. Check
    ``STATE.active`` first: with tracing off, do nothing at all."""
    from app.tracing.propagation import extract

    span = STATE.tracer.start_span(name, context=extract(carrier), kind=SpanKind.SERVER, attributes=attributes)
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield span
    finally:
        otel_context.detach(token)
        span.end()
