"""Tracing from the standard OTEL_* variables: off without an endpoint (the SDK not even imported), the exporter,
sampler and resource they name, and refusals of values the service cannot honour."""

from __future__ import annotations

import subprocess
import sys

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import sampling
from opentelemetry.trace import NoOpTracer

from app.tracing import STATE, setup

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.invalid:4318"}


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "  "},
        {**ENDPOINT, "OTEL_SDK_DISABLED": "true"},
        {**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_SERVICE_NAME": "named", "OTEL_TRACES_SAMPLER": "always_on"},  # settings, but nowhere to send
    ],
    ids=["nothing", "blank", "sdk-disabled", "exporter-none", "no-endpoint"],
)
def test_without_an_endpoint_tracing_stays_off(environ: dict[str, str]) -> None:
    assert setup.configure(environ) is False
    assert STATE.active is False
    assert isinstance(STATE.tracer, NoOpTracer)


def test_off_means_the_sdk_is_never_imported() -> None:
    """The hot path's only cost is one flag: no provider, no processor thread, no SDK module loaded."""
    code = (
        "import sys; from app.tracing.setup import configure; from app.tracing import spans, propagation; "
        "assert configure({}) is False; "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


@pytest.mark.parametrize(
    ("environ", "kind", "endpoint"),
    [
        (ENDPOINT, HttpExporter, "http://collector.invalid:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c.invalid:4318/"}, HttpExporter, "http://c.invalid:4318/v1/traces"),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c.invalid:9999/custom", **ENDPOINT},
            HttpExporter,
            "http://c.invalid:9999/custom",  # a signal's own endpoint is taken as it is
        ),
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, GrpcExporter, None),
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, GrpcExporter, None),
    ],
    ids=["http-generic", "trailing-slash", "http-traces-endpoint", "grpc", "grpc-traces-protocol"],
)
def test_the_exporter_follows_the_protocol_and_endpoint(
    environ: dict[str, str], kind: type, endpoint: str | None
) -> None:
    exporter = setup.exporter(environ)
    try:
        assert isinstance(exporter, kind)
        if endpoint is not None:
            assert exporter._endpoint == endpoint  # type: ignore[attr-defined]
    finally:
        exporter.shutdown()


@pytest.mark.parametrize(
    ("environ", "description"),
    [
        ({}, "ParentBased{root:AlwaysOnSampler"),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, "AlwaysOffSampler"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}, "TraceIdRatioBased{0.25}"),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
            "ParentBased{root:TraceIdRatioBased{0.01}",
        ),
        ({"OTEL_TRACES_SAMPLER": "traceidratio"}, "TraceIdRatioBased{1.0}"),
    ],
)
def test_the_sampler_follows_the_environment(environ: dict[str, str], description: str) -> None:
    chosen = setup.sampler(environ)
    assert isinstance(chosen, sampling.Sampler)
    assert chosen.get_description().startswith(description)


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
        {"OTEL_TRACES_SAMPLER": "sometimes"},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
        {"OTEL_BSP_MAX_QUEUE_SIZE": "8", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "16"},
    ],
    ids=["protocol", "sampler", "ratio-text", "ratio-range", "batch-over-queue"],
)
def test_values_the_service_cannot_honour_stop_it(environ: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in environ.items():  # the SDK reads OTEL_BSP_* from the process environment itself
        monkeypatch.setenv(name, value)
    with pytest.raises(setup.TracingConfigError):
        setup.configure({**ENDPOINT, **environ})
    assert STATE.active is False


def test_the_resource_names_the_service_and_the_process() -> None:
    default = setup.resource_attributes({}, "engine")
    assert (default["service.name"], default["xnli.process"]) == ("xnli-serve", "engine")
    environ = {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=from-attrs,team=a%20b"}
    assert setup.resource_attributes(environ, "server")["service.name"] == "from-attrs"
    named = setup.resource_attributes({**environ, "OTEL_SERVICE_NAME": "nli"}, "server")
    assert (named["service.name"], named["deployment.environment"], named["team"]) == ("nli", "prod", "a b")


@pytest.mark.sockets  # its span is exported (to nowhere) at shutdown
def test_an_endpoint_turns_tracing_on_once() -> None:
    assert setup.configure(ENDPOINT, role="server") is True
    assert STATE.active is True
    tracer = STATE.tracer
    assert setup.configure(ENDPOINT) is True
    assert STATE.tracer is tracer  # one provider per process
    with tracer.start_as_current_span("probe") as span:
        assert span.is_recording()


def test_check_refuses_what_configure_would_and_turns_nothing_on() -> None:
    setup.check({})  # off: nothing to check
    setup.check({**ENDPOINT, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"})
    with pytest.raises(setup.TracingConfigError):
        setup.check({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"})
    assert STATE.active is False


def test_a_supervisor_stops_before_its_children_on_a_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.multiprocess.supervisor import run_supervisor
    from app.settings import Settings

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.invalid:4318")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "sometimes")
    assert run_supervisor(Settings(), {}) == 2
