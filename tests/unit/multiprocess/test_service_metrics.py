"""One /metrics for the whole service: engine series and every front end's, added up sample by sample."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.engine.errors import EngineError
from app.multiprocess.service_metrics import ServiceMetrics, merge

ENGINE = """# HELP xnli_requests_total Requests answered.
# TYPE xnli_requests_total counter
# HELP xnli_priority_requests_total Requests the engine took.
# TYPE xnli_priority_requests_total counter
xnli_priority_requests_total{priority="interactive",variant="a"} 7.0
xnli_priority_requests_created{priority="interactive",variant="a"} 100.0
# HELP xnli_inflight_requests Requests inside the engine.
# TYPE xnli_inflight_requests gauge
xnli_inflight_requests 2.0
"""
FRONT_ONE = """# HELP xnli_requests_total Requests answered.
# TYPE xnli_requests_total counter
xnli_requests_total{outcome="success",variant="a"} 3.0
xnli_requests_created{outcome="success",variant="a"} 50.0
"""
FRONT_TWO = """# HELP xnli_requests_total Requests answered.
# TYPE xnli_requests_total counter
xnli_requests_total{outcome="success",variant="a"} 4.0
xnli_requests_total{outcome="overloaded",variant="a"} 1.0
xnli_requests_created{outcome="success",variant="a"} 40.0
"""


def families(*texts: str) -> list[object]:
    return [family for text in texts for family in text_string_to_metric_families(text)]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_samples_with_the_same_labels_add_up_and_created_is_the_earliest() -> None:
    merged = merge(families(ENGINE, FRONT_ONE, FRONT_TWO))  # type: ignore[arg-type]
    by_name = {family.name: family for family in merged}
    # (the text parser files ``_created`` samples as a family of their own)
    requests = {
        (s.name, s.labels["outcome"]): s.value
        for name in ("xnli_requests", "xnli_requests_created")
        for s in by_name[name].samples
    }
    assert requests == {
        ("xnli_requests_total", "success"): 7.0,
        ("xnli_requests_created", "success"): 40.0,
        ("xnli_requests_total", "overloaded"): 1.0,
    }
    assert [s.value for s in by_name["xnli_priority_requests"].samples if s.name.endswith("_total")] == [7.0]
    assert [s.value for s in by_name["xnli_inflight_requests"].samples] == [2.0]


def test_the_service_collector_shows_engine_and_front_end_series(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    registry.register(ServiceMetrics(lambda: ENGINE.encode(), tmp_path))  # no front-end files yet
    shown = samples(generate_latest(registry).decode())
    assert shown[("xnli_priority_requests_total", (("priority", "interactive"), ("variant", "a")))] == 7.0
    assert shown[("xnli_inflight_requests", ())] == 2.0


def test_without_the_engine_process_the_front_end_series_still_show(tmp_path: Path) -> None:
    def gone() -> bytes:
        raise EngineError("the engine process is unavailable")

    registry = CollectorRegistry()
    registry.register(ServiceMetrics(gone, tmp_path))
    assert generate_latest(registry) == b""
