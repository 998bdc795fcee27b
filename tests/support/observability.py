"""Test helpers for what watches the service: a real Prometheus server on loopback, and an in-memory span exporter."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from app.tracing import STATE
from tests.support.helpers import free_port


@contextmanager
def running_prometheus(folder: Path, config: dict[str, Any], *flags: str) -> Iterator[str]:
    """``prometheus`` (the Debian package .ci/run installs) with ``config`` on a free loopback port, ready; its URL.
    Its log is ``folder / "prometheus.log"``, shown if it never gets ready."""
    port = free_port()
    (folder / "prometheus.yml").write_text(json.dumps(config), encoding="utf-8")
    log = (folder / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            *flags,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise TimeoutError((folder / "prometheus.log").read_text())
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


class KeptSpans(SpanExporter):
    """Every span ended, kept in memory, exported at once (a SimpleSpanProcessor's)."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def trace_into_memory(monkeypatch: pytest.MonkeyPatch) -> KeptSpans:
    """Tracing on for one test, every span kept (``monkeypatch`` puts the no-op tracer back)."""
    exporter = KeptSpans()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(STATE, "tracer", provider.get_tracer("test"))
    monkeypatch.setattr(STATE, "active", True)
    return exporter
