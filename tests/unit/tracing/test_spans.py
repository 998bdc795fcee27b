"""The request span a transport-neutral caller gets: the transport's server span when there is one, else its own in
the caller's context (a gRPC call that only extracted its metadata's context)."""

from __future__ import annotations

import pytest
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind

from app.tracing import propagation, spans
from tests.support.observability import KeptSpans, trace_into_memory

TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER = {"traceparent": f"00-{TRACE}-b7ad6b7169203331-01"}


@pytest.fixture
def kept(monkeypatch: pytest.MonkeyPatch) -> KeptSpans:
    return trace_into_memory(monkeypatch)


def test_a_transport_server_span_is_the_request_span(kept: KeptSpans) -> None:
    with spans.server_span("Predict", CALLER, {"rpc.system": "grpc"}) as server:
        with spans.request_span("predict") as request:
            assert request is server
        header = propagation.traceparent(server)
    (ended,) = kept.spans
    assert (ended.kind, f"{ended.context.trace_id:032x}", ended.parent.span_id) == (  # type: ignore[union-attr]
        SpanKind.SERVER,
        TRACE,
        0xB7AD6B7169203331,
    )
    assert header is not None
    assert header.startswith(f"00-{TRACE}-")


def test_a_caller_context_alone_gets_a_request_span_of_its_own(kept: KeptSpans) -> None:
    token = context.attach(propagation.extract(CALLER))
    try:
        with spans.request_span("predict") as request:
            assert request.is_recording()
            assert trace.get_current_span() is request
    finally:
        context.detach(token)
    (ended,) = kept.spans
    assert (ended.name, f"{ended.context.trace_id:032x}") == ("predict", TRACE)


def test_an_unsampled_parent_makes_no_engine_span(kept: KeptSpans) -> None:
    token = context.attach(propagation.extract({"traceparent": f"00-{TRACE}-b7ad6b7169203331-00"}))
    try:
        assert spans.start_span("engine request", {}) is None
    finally:
        context.detach(token)
    assert kept.spans == []
