"""From a latency panel to a trace: the dashboard draws exemplars and has a trace data-source variable, Grafana's
Prometheus data source links trace_id exemplars to it, and the Compose Prometheus keeps exemplars."""

from __future__ import annotations

import yaml

from tests.support.deploy_support import DEPLOY, dashboard_module

DASHBOARD = dashboard_module().build()


def panel(title: str) -> dict[str, object]:
    return next(panel for panel in DASHBOARD["panels"] if panel["title"] == title)


def test_the_latency_panels_draw_exemplars_and_link_to_the_trace_data_source() -> None:
    latency = panel("Request latency p50 / p95 / p99")
    assert all(query["exemplar"] for query in latency["targets"])  # type: ignore[attr-defined]
    links = latency["fieldConfig"]["defaults"]["links"]  # type: ignore[index]
    assert "${traces}" in links[0]["url"]
    queue = panel("Queue and inference p95")
    assert [query.get("exemplar", False) for query in queue["targets"]] == [True, False]  # type: ignore[attr-defined]
    variables = {variable["name"]: variable for variable in DASHBOARD["templating"]["list"]}
    assert (variables["traces"]["type"], variables["traces"]["query"]) == ("datasource", "tempo")


def test_the_prometheus_data_source_links_exemplars_and_compose_keeps_them() -> None:
    source = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    destinations = source["datasources"][0]["jsonData"]["exemplarTraceIdDestinations"]
    assert destinations == [{"name": "trace_id", "datasourceUid": "traces"}]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    assert "--enable-feature=exemplar-storage" in compose["services"]["prometheus"]["command"]
