"""W3C trace context from any str->str carrier (HTTP headers, gRPC metadata, the engine channel) and back."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from app.tracing import propagation

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


@pytest.mark.parametrize("key", ["traceparent", "Traceparent", "TRACEPARENT"])
def test_the_context_is_read_whatever_the_case_of_its_key(key: str) -> None:
    context = propagation.extract({key: f"00-{TRACE}-{SPAN}-01", "tracestate": "vendor=opaque"})
    parent = trace.get_current_span(context).get_span_context()
    assert (f"{parent.trace_id:032x}", f"{parent.span_id:016x}") == (TRACE, SPAN)
    assert parent.is_remote
    assert parent.trace_flags.sampled
    assert parent.trace_state.get("vendor") == "opaque"


@pytest.mark.parametrize(
    "carrier",
    [{}, {"traceparent": "garbage"}, {"traceparent": f"00-{'0' * 32}-{SPAN}-01"}, {"x-request-id": "abc"}],
    ids=["none", "garbage", "zero-trace-id", "other-headers"],
)
def test_no_or_a_malformed_context_gives_an_empty_one(carrier: dict[str, str]) -> None:
    assert not trace.get_current_span(propagation.extract(carrier)).get_span_context().is_valid


def test_a_span_goes_out_as_traceparent_and_tracestate() -> None:
    context = SpanContext(
        int(TRACE, 16), int(SPAN, 16), False, TraceFlags(TraceFlags.SAMPLED), TraceState([("vendor", "opaque")])
    )
    span = NonRecordingSpan(context)
    assert propagation.inject(span) == {"traceparent": f"00-{TRACE}-{SPAN}-01", "tracestate": "vendor=opaque"}
    assert propagation.traceparent(span) == f"00-{TRACE}-{SPAN}-01"
    assert propagation.traceparent(trace.INVALID_SPAN) is None
    assert {"traceparent", "tracestate"} == propagation.FIELDS
