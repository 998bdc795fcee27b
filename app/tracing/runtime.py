"""What the hot path reads: whether tracing is on, the tracer, and the small conversions spans and exemplars need."""

from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.trace import NoOpTracer, Span, SpanContext, Tracer, format_trace_id

TRACER_NAME = "xnli-serve"


class TracingState:
    """``active`` is read on every request: while False nothing else here is touched."""

    __slots__ = ("active", "tracer")

    def __init__(self) -> None:
        self.active = False
        self.tracer: Tracer = NoOpTracer()


STATE = TracingState()

# Spans take wall-clock nanoseconds; the engine measures with perf_counter. One offset, taken once, converts: the two
# clocks drift by microseconds an hour, far below what a span shows.
_OFFSET_NS = time.time_ns() - time.perf_counter_ns()


def perf_to_ns(perf: float) -> int:
    """A ``time.perf_counter()`` reading as the epoch nanoseconds a span's start or end takes."""
    return _OFFSET_NS + int(perf * 1e9)


def trace_id_of(context: SpanContext) -> str | None:
    """The trace id of a sampled span (32 hex digits), else None: an unsampled trace is nowhere to be found."""
    if context.is_valid and context.trace_flags.sampled:
        return format_trace_id(context.trace_id)
    return None


def exemplar(span: Span | None = None) -> dict[str, str] | None:
    """The exemplar labels of a histogram observation made inside ``span`` (the current span by default): the trace
    id, when the span is sampled."""
    if not STATE.active:
        return None
    trace_id = trace_id_of((span or trace.get_current_span()).get_span_context())
    return None if trace_id is None else {"trace_id": trace_id}
