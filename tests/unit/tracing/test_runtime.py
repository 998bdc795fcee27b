"""What the hot path reads: exemplars only for sampled spans while tracing is on, and span times from perf_counter."""

from __future__ import annotations

import time

import pytest
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from app.tracing import STATE, exemplar, perf_to_ns, trace_id_of

TRACE = 0x0AF7651916CD43DD8448EB211C80319C


def span(flags: int) -> NonRecordingSpan:
    return NonRecordingSpan(SpanContext(TRACE, 0xB7AD6B7169203331, False, TraceFlags(flags)))


def test_a_sampled_span_is_an_exemplar_only_while_tracing_is_on(monkeypatch: pytest.MonkeyPatch) -> None:
    assert exemplar(span(1)) is None  # off: nothing is looked at
    monkeypatch.setattr(STATE, "active", True)
    assert exemplar(span(1)) == {"trace_id": "0af7651916cd43dd8448eb211c80319c"}
    assert exemplar(span(0)) is None  # not sampled: no trace to find behind it
    assert exemplar() is None  # no span current
    assert trace_id_of(span(0).get_span_context()) is None


def test_perf_counter_readings_become_wall_clock_nanoseconds() -> None:
    before = time.time_ns()
    converted = perf_to_ns(time.perf_counter())
    after = time.time_ns()
    assert before - 1_000_000 <= converted <= after + 1_000_000
