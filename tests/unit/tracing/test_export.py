"""An exporter that cannot reach its endpoint loses spans, never time: ending a span only queues it, and the process
leaves within the bounded wait at shutdown."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from app.tracing import STATE, setup

pytestmark = pytest.mark.sockets


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # nothing listens there any more: every export is refused


def quiet_exporter_retries() -> None:
    """The exporters' threads go on retrying (and logging each failure) for up to their 10 s timeout, after the test
    and, at the end of a run, after pytest has closed the streams their log records would reach ("Logging error ...
    I/O operation on closed file"). Their records are dropped for the rest of the run on purpose: nobody reads them."""
    exporter_log = logging.getLogger("opentelemetry.exporter.otlp")
    exporter_log.addHandler(logging.NullHandler())
    exporter_log.propagate = False


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_an_unreachable_collector_costs_the_spans_not_the_caller(protocol: str) -> None:
    quiet_exporter_retries()
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
    }
    assert setup.configure(environ)
    started = time.perf_counter()
    for index in range(2_000):
        with STATE.tracer.start_as_current_span("request", attributes={"index": index}):
            pass
    spent = time.perf_counter() - started
    assert spent < 2.0, f"2,000 spans took {spent:.2f}s: the caller waited on the exporter"
    # Bounded, however long the exporter would retry (its own timeout is 10 s): the margins over wait_s allow for the
    # exporter's thread holding the GIL while it encodes (0.66 s for a 0.2 s wait was seen on a clean-clone CI run).
    flushing = time.perf_counter()
    setup.force_flush(wait_s=0.2)  # the exports fail and retry in the background
    assert time.perf_counter() - flushing < 2.0
    closing = time.perf_counter()
    setup.shutdown(wait_s=1.0)
    assert time.perf_counter() - closing < 3.0
    assert STATE.active is False
