"""The committed dashboard is what its generator writes; promtool accepts the config and passes the rule tests."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from tests.support.deploy_support import DEPLOY, RULES, dashboard_module, rule_files

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus; .ci/run installs it)"
)


def test_committed_dashboard_equals_the_generator_output() -> None:
    module = dashboard_module()
    committed = (DEPLOY / "grafana" / "dashboards" / "xnli-serve.json").read_text(encoding="utf-8")
    assert committed == module.render(), "run: python deploy/grafana/dashboard.py"


def test_dashboard_has_the_rows_variables_and_units_users_need() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "xnli-serve.json").read_text(encoding="utf-8"))
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert rows == [
        "Overview",
        "Latency",
        "Batching",
        "Variants side by side",
        "Variant comparison (live)",
        "Resources",
    ]
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["variant"]["multi"] is True
    assert "label_values(xnli_variant_info, variant)" in variables["variant"]["definition"]
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert {panel["type"] for panel in panels} >= {"timeseries", "heatmap", "table"}
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert panel["description"], panel["title"]
        if panel["type"] == "timeseries":
            assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        for query in panel["targets"]:
            if "xnli_" in query["expr"] and "xnli_inflight" not in query["expr"]:
                assert "$variant" in query["expr"] or "cuda" in query["expr"], panel["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_compose_file_wires_service_prometheus_and_grafana() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"xnli-serve", "xnli-serve-cpu", "prometheus", "grafana"} <= set(services)
    assert services["xnli-serve"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["xnli-serve-cpu"]["profiles"] == ["cpu"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), volume
    for volume in services["xnli-serve"]["volumes"]:
        assert (DEPLOY / volume.split(":")[0]).resolve().exists()
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["xnli-serve:8000"]


@needs_promtool
def test_promtool_check_config() -> None:
    result = subprocess.run(
        [str(PROMTOOL), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_check_rules() -> None:
    result = subprocess.run(
        [str(PROMTOOL), "check", "rules", *map(str, rule_files())], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rule_unit_tests() -> None:
    result = subprocess.run(
        [str(PROMTOOL), "test", "rules", str(RULES / "tests.yml")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
