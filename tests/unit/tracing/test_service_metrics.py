"""Multi-process /metrics: the engine process's OpenMetrics exposition keeps its exemplars (queue-wait trace ids)
through the merge with the front ends' series."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from app.multiprocess.service_metrics import ServiceMetrics

TRACE = "0af7651916cd43dd8448eb211c80319c"


def test_engine_exemplars_survive_the_merge(tmp_path: Path) -> None:
    engine = CollectorRegistry()
    queue = Histogram("xnli_queue_duration_seconds", "Queue wait.", ["variant"], registry=engine, buckets=(0.1, 1.0))
    queue.labels("a").observe(0.05, {"trace_id": TRACE})
    queue.labels("a").observe(0.5)
    exposition = openmetrics.generate_latest(engine)  # type: ignore[no-untyped-call]
    service = CollectorRegistry()
    service.register(ServiceMetrics(lambda: exposition, tmp_path))  # no front end has written series yet
    scraped = openmetrics.generate_latest(service).decode()  # type: ignore[no-untyped-call]
    assert f'xnli_queue_duration_seconds_bucket{{le="0.1",variant="a"}} 1.0 # {{trace_id="{TRACE}"}} 0.05' in scraped
    assert 'xnli_queue_duration_seconds_count{variant="a"} 2.0' in scraped
    assert "trace_id" not in generate_latest(service).decode()  # the classic format has no exemplars
