"""``/metrics`` of a front end shows the whole service: the engine process's series plus every front end's.

The engine process is the one source of engine series (queues, batches, devices, failures it decided). The front
ends record the HTTP series (xnli_requests_total, xnli_request_duration_seconds, xnli_routed_requests_total, and the
refusals they make themselves) in prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by the
supervisor for front ends only), so any front end can add up all of them, including front ends restarted since.
Samples with the same name and labels are summed (``_created``: the earliest); front-end gauges are left out: every
gauge is engine state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from app.engine.errors import EngineError


def merge(families: Iterable[Metric]) -> list[Metric]:
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
    for family in families:
        if family.name not in merged:
            merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            values[family.name] = {}
        samples = values[family.name]
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            earlier = samples.get(key)
            if earlier is None:
                samples[key] = sample
            elif sample.name.endswith("_created"):
                samples[key] = earlier._replace(value=min(earlier.value, sample.value))
            else:
                samples[key] = earlier._replace(value=earlier.value + sample.value)
    for name, family in merged.items():
        family.samples = list(values[name].values())
    return list(merged.values())


class ServiceMetrics(Collector):
    def __init__(self, engine_exposition: Callable[[], bytes], multiprocess_dir: Path) -> None:
        self.engine_exposition = engine_exposition
        self.fronts = MultiProcessCollector(None, str(multiprocess_dir))  # type: ignore[no-untyped-call]

    def describe(self) -> list[Metric]:
        return []  # registering must not call the engine process

    def collect(self) -> Iterator[Metric]:
        try:
            exposition = self.engine_exposition().decode("utf-8")
            # The engine process answers OpenMetrics (issue #27: its exemplars, queue-wait trace ids, come along).
            parse = openmetrics_families if exposition.endswith("# EOF\n") else text_string_to_metric_families
            engine = list(parse(exposition))
        except EngineError:  # the engine process is gone: the front ends' series still show
            engine = []
        fronts = (family for family in self.fronts.collect() if family.type != "gauge")  # type: ignore[no-untyped-call]
        yield from merge([*engine, *fronts])


def serve_service_metrics(engine_exposition: Callable[[], bytes], multiprocess_dir: Path) -> None:
    """Make this process's default registry (what /metrics exposes) the whole service's metrics."""
    for collector in list(REGISTRY._collector_to_names):
        REGISTRY.unregister(collector)
    REGISTRY.register(ServiceMetrics(engine_exposition, multiprocess_dir))
