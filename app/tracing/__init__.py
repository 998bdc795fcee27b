"""OpenTelemetry traces of the service's phases (request, admission, tokenization, queue wait, device batch).

Off unless an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``): then
``STATE.active`` is False, the tracer is a no-op one, and every caller guards its tracing with that flag, so the hot
path pays one attribute read. ``setup.configure`` turns it on from the standard ``OTEL_*`` variables; ``propagation``
carries a trace across transports and processes as a str->str carrier (W3C ``traceparent``/``tracestate``).

Knows nothing of transports or of the engine: every layer may import it.
"""

from app.tracing.runtime import STATE, exemplar, perf_to_ns, trace_id_of

__all__ = ["STATE", "exemplar", "perf_to_ns", "trace_id_of"]
