"""Turn tracing on from the standard ``OTEL_*`` environment variables, once per process.

Read here: ``OTEL_SDK_DISABLED``, ``OTEL_TRACES_EXPORTER`` (``otlp`` or ``none``), ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_PROTOCOL`` / ``..._TRACES_PROTOCOL`` (``http/protobuf``,
the default, or ``grpc``), ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES``. The SDK itself reads the rest (exporter headers, timeout, compression, certificates;
``OTEL_BSP_*`` for the batch span processor). No endpoint: tracing stays off and the SDK is not even imported.

Spans leave through a ``BatchSpanProcessor``: ending a span only queues it, a background thread exports. An exporter
that cannot reach its endpoint loses spans (the queue is bounded, ``OTEL_BSP_MAX_QUEUE_SIZE``), never requests.
"""

from __future__ import annotations

import logging
import os
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from app import __version__
from app.tracing.runtime import STATE, TRACER_NAME

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler

log = logging.getLogger(__name__)

PROTOCOLS = ("http/protobuf", "grpc")
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
DEFAULT_SERVICE_NAME = "xnli-serve"
SHUTDOWN_WAIT_S = 2.0  # at exit, spans still queued get this long to leave: an unreachable collector holds no exit

_provider: TracerProvider | None = None


class TracingConfigError(ValueError):
    """An ``OTEL_*`` value this service cannot honour (stops start-up, like a bad setting)."""


def _get(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def endpoint(environ: Mapping[str, str]) -> str | None:
    """The OTLP endpoint traces go to; None keeps tracing off."""
    if (_get(environ, "OTEL_SDK_DISABLED") or "").lower() == "true":
        return None
    if (_get(environ, "OTEL_TRACES_EXPORTER") or "otlp").lower() == "none":
        return None
    return _get(environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or _get(environ, "OTEL_EXPORTER_OTLP_ENDPOINT")


def protocol(environ: Mapping[str, str]) -> str:
    chosen = (
        _get(environ, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or _get(environ, "OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if chosen not in PROTOCOLS:
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={chosen!r}: this service exports {' or '.join(PROTOCOLS)}"
        )
    return chosen


def exporter(environ: Mapping[str, str]) -> SpanExporter:
    """The OTLP span exporter the environment names. A signal-specific endpoint is used as it is; the generic one
    gets ``/v1/traces`` appended over HTTP, as the specification says."""
    chosen = protocol(environ)
    specific = _get(environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    target = specific or _get(environ, "OTEL_EXPORTER_OTLP_ENDPOINT")
    assert target is not None
    if chosen == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=target)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    if not specific:
        target = target.rstrip("/") + "/v1/traces"
    return HttpExporter(endpoint=target)


def sampler(environ: Mapping[str, str]) -> Sampler:
    """``OTEL_TRACES_SAMPLER`` (default ``parentbased_always_on``: a caller's sampling decision is kept)."""
    from opentelemetry.sdk.trace import sampling

    name = (_get(environ, "OTEL_TRACES_SAMPLER") or "parentbased_always_on").lower()
    if name not in SAMPLERS:
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER={name!r}: one of {', '.join(SAMPLERS)}")
    argument = _get(environ, "OTEL_TRACES_SAMPLER_ARG")
    ratio = 1.0
    if name.endswith("traceidratio") and argument is not None:
        try:
            ratio = float(argument)
        except ValueError:
            raise TracingConfigError(f"OTEL_TRACES_SAMPLER_ARG={argument!r}: a ratio in [0, 1]") from None
        if not 0.0 <= ratio <= 1.0:
            raise TracingConfigError(f"OTEL_TRACES_SAMPLER_ARG={argument!r}: a ratio in [0, 1]")
    chosen: Sampler = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "parentbased_always_on": sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": sampling.ParentBased(sampling.ALWAYS_OFF),
    }.get(name) or (
        sampling.TraceIdRatioBased(ratio)
        if name == "traceidratio"
        else sampling.ParentBased(sampling.TraceIdRatioBased(ratio))
    )
    return chosen


def resource_attributes(environ: Mapping[str, str], role: str) -> dict[str, str]:
    """``service.name`` (``OTEL_SERVICE_NAME``, else ``OTEL_RESOURCE_ATTRIBUTES``'s, else xnli-serve), the version,
    the process's role (``xnli.process``: server, front-end or engine) and every ``OTEL_RESOURCE_ATTRIBUTES`` pair."""
    attributes = {"service.name": DEFAULT_SERVICE_NAME, "service.version": __version__, "xnli.process": role}
    for item in (_get(environ, "OTEL_RESOURCE_ATTRIBUTES") or "").split(","):
        key, separator, value = item.partition("=")
        if separator and key.strip():
            attributes[key.strip()] = urllib.parse.unquote(value.strip())
    service = _get(environ, "OTEL_SERVICE_NAME")
    if service is not None:
        attributes["service.name"] = service
    return attributes


def check(environ: Mapping[str, str]) -> None:
    """Raise TracingConfigError for a value ``configure`` would refuse (a supervisor checks before its children
    start); the SDK's own OTEL_BSP_* checks happen in ``configure``."""
    if endpoint(environ) is not None:
        protocol(environ)
        sampler(environ)


def configure(environ: Mapping[str, str] | None = None, role: str = "server") -> bool:
    """Start exporting traces if the environment names an endpoint; True when tracing is on. Idempotent: a process
    has one tracer provider (``shutdown`` ends it)."""
    global _provider
    environ = os.environ if environ is None else environ
    target = endpoint(environ)
    if target is None:
        return False
    if _provider is not None:
        return True
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        sampler=sampler(environ),
        resource=Resource.create(resource_attributes(environ, role)),
        shutdown_on_exit=False,  # ``shutdown`` does it, bounded; processes here leave with os._exit
    )
    try:
        provider.add_span_processor(BatchSpanProcessor(exporter(environ)))
    except ValueError as error:  # the SDK's own checks of OTEL_BSP_* and the exporter's settings
        raise TracingConfigError(f"OTEL_* settings: {error}") from None
    _provider = provider
    STATE.tracer = provider.get_tracer(TRACER_NAME, __version__)
    STATE.active = True
    log.info("tracing on: spans go to %s over %s", target, protocol(environ))
    return True


def _bounded(call: Callable[[], object], wait_s: float, name: str) -> bool:
    """Run ``call`` on a daemon thread and wait at most ``wait_s``: the SDK's own flush ignores its timeout while
    the exporter retries an unreachable endpoint (opentelemetry-python issue 4568)."""
    closing = threading.Thread(target=call, name=name, daemon=True)
    closing.start()
    closing.join(wait_s)
    return not closing.is_alive()


def shutdown(wait_s: float = SHUTDOWN_WAIT_S) -> None:
    """Export what is queued (for at most ``wait_s``) and turn tracing off. Safe to call when it is off."""
    global _provider
    provider, _provider = _provider, None
    STATE.active = False
    from opentelemetry.trace import NoOpTracer

    STATE.tracer = NoOpTracer()
    if provider is not None:
        _bounded(provider.shutdown, wait_s, "tracing-shutdown")


def force_flush(wait_s: float = 5.0) -> bool:
    """Export every span ended so far, waiting at most ``wait_s`` (tests and benchmarks); True once done."""
    provider = _provider
    return provider is None or _bounded(provider.force_flush, wait_s, "tracing-flush")
