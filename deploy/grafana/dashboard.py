"""Generates deploy/grafana/dashboards/xnli-serve.json, the dashboard Grafana provisions.

    python deploy/grafana/dashboard.py            # rewrite the JSON
    python deploy/grafana/dashboard.py --check    # exit 1 if the committed JSON differs (make test checks this)

Plain dictionaries rather than a dashboard SDK: the panel list below reads like the dashboard itself, and the only
thing Grafana ever sees is the committed JSON. Every PromQL expression here is evaluated against a real Prometheus
scraping a real xnli-serve by tests/integration/monitoring/test_prometheus.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "xnli-serve.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
V = 'variant=~"$variant"'
P = 'primary=~"$variant"'  # shadow series: the primary is one of the selected variants
FAILED = 'outcome=~"error|overloaded|unavailable"'  # service-side failures: 5xx and 429


def target(expr: str, legend: str = "", ref: str = "A", **extra: Any) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref, **extra}


# Tracing (issue #27): the latency histograms carry the trace id of sampled requests as exemplars (label trace_id);
# these queries ask Grafana to draw them, and the Prometheus data source links each one to the trace in the data
# source whose uid is `traces` (deploy/grafana/provisioning/datasources/prometheus.yml; docs/operations.md#tracing).
TRACES_VARIABLE = "traces"


def with_exemplars(query: dict[str, Any]) -> dict[str, Any]:
    return {**query, "exemplar": True}


# A series' data link: Explore on the $traces data source, a TraceQL search for the series' variant over the range.
TRACES_LINK = {
    "title": "Traces of ${__field.labels.variant} in $traces",
    "url": '/explore?left={"datasource":"${traces}","queries":[{"refId":"A","queryType":"traceql",'
    '"query":"{span.xnli.variant=\\"${__field.labels.variant}\\"}"}],"range":{"from":"${__from}","to":"${__to}"}}',
}


class Layout:
    """Places panels left to right in rows of 24 grid units."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = 0
        self.y = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        self.y += 0 if self.x == 0 and not self.panels else 8
        self.x = 0
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "id": self._id(),
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def add(self, panel: dict[str, Any], width: int = 8, height: int = 8) -> None:
        if self.x + width > 24:
            self.x = 0
            self.y += height
        panel["gridPos"] = {"h": height, "w": width, "x": self.x, "y": self.y}
        panel["id"] = self._id()
        panel.setdefault("datasource", DATASOURCE)
        self.panels.append(panel)
        self.x += width

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def timeseries(
    title: str, targets: list[dict[str, Any]], unit: str, description: str, **defaults: Any
) -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never"},
                **defaults,
            },
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"thresholds": {"mode": "absolute", "steps": [{"value": value, "color": color} for value, color in steps]}}


def mean(metric: str) -> str:
    """Mean per observation over the window, per variant (absent, not NaN, when nothing was observed)."""
    return (
        f"sum by (variant) (rate({metric}_sum{{{V}}}[$__rate_interval]))"
        f" / sum by (variant) (rate({metric}_count{{{V}}}[$__rate_interval]) > 0)"
    )


def quantile(q: float, metric: str, by: str = "variant", selector: str = V) -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[$__rate_interval])))"


def agreement(by: str) -> str:
    """Share of shadowed pairs whose two top labels match (0, not absent, when none do)."""
    same = " or ".join(
        f'rate(xnli_shadow_pairs_total{{{P}, primary_label="{label}", candidate_label="{label}"}}[$__rate_interval])'
        for label in ("entailment", "neutral", "contradiction")
    )
    every = f"rate(xnli_shadow_pairs_total{{{P}}}[$__rate_interval])"
    return f"(sum by ({by}) ({same}) or sum by ({by}) ({every}) * 0) / sum by ({by}) ({every} > 0)"


def build() -> dict[str, Any]:
    layout = Layout()

    layout.row("Overview")
    layout.add(
        timeseries(
            "Request rate",
            [target(f"sum by (variant) (rate(xnli_requests_total{{{V}}}[$__rate_interval]))", "{{variant}}")],
            "reqps",
            "Requests answered per second, every outcome.",
        )
    )
    layout.add(
        timeseries(
            "Error ratio (5xx and 429)",
            [
                target(
                    f"(sum by (variant) (rate(xnli_requests_total{{{V}, {FAILED}}}[$__rate_interval]))"
                    f" or sum by (variant) (rate(xnli_requests_total{{{V}}}[$__rate_interval])) * 0)"
                    f" / sum by (variant) (rate(xnli_requests_total{{{V}}}[$__rate_interval]) > 0)",
                    "{{variant}}",
                )
            ],
            "percentunit",
            "Share of requests the service failed or refused. Client mistakes (4xx) are not counted.",
            **thresholds((None, "green"), (0.01, "orange"), (0.05, "red")),
            max=1,
            min=0,
        )
    )
    layout.add(
        timeseries(
            "Queue depth and in-flight",
            [
                target(f"sum by (variant) (xnli_queue_depth{{{V}}})", "queued pairs {{variant}}"),
                target("sum(xnli_inflight_requests)", "requests in the engine", "B"),
            ],
            "short",
            "Pairs waiting per variant, and requests inside the engine (tokenizing, queued or computing).",
        )
    )

    layout.row("Latency")
    layout.add(
        timeseries(
            "Request latency p50 / p95 / p99",
            [
                with_exemplars(target(quantile(0.5, "xnli_request_duration_seconds"), "p50 {{variant}}")),
                with_exemplars(target(quantile(0.95, "xnli_request_duration_seconds"), "p95 {{variant}}", "B")),
                with_exemplars(target(quantile(0.99, "xnli_request_duration_seconds"), "p99 {{variant}}", "C")),
            ],
            "s",
            "End to end inside the service, per variant. Dots are exemplars: sampled requests, each linked to its "
            "trace; the panel's link opens the variant's traces in the $traces data source.",
            **thresholds((None, "green"), (0.5, "red")),
            links=[TRACES_LINK],
        ),
        width=12,
    )
    layout.add(
        {
            "type": "heatmap",
            "title": "Request duration distribution",
            "description": "All selected variants; darker cells hold more requests.",
            "targets": [
                target(
                    f"sum by (le) (increase(xnli_request_duration_seconds_bucket{{{V}}}[$__rate_interval]))",
                    "{{le}}",
                    format="heatmap",
                )
            ],
            "options": {
                "calculate": False,
                "yAxis": {"unit": "s"},
                "cellGap": 1,
                "color": {"scheme": "Oranges", "mode": "scheme"},
            },
        },
        width=12,
    )
    layout.add(
        timeseries(
            "Where the time goes (mean per request)",
            [
                target(
                    mean("xnli_queue_duration_seconds"),
                    "queue {{variant}}",
                ),
                target(
                    mean("xnli_tokenization_duration_seconds"),
                    "tokenization {{variant}}",
                    "B",
                ),
                target(
                    mean("xnli_inference_duration_seconds"),
                    "inference per batch {{variant}}",
                    "C",
                ),
            ],
            "s",
            "Queue wait and tokenization per request, forward pass per batch.",
        ),
        width=12,
    )
    layout.add(
        timeseries(
            "Queue and inference p95",
            [
                with_exemplars(target(quantile(0.95, "xnli_queue_duration_seconds"), "queue p95 {{variant}}")),
                target(quantile(0.95, "xnli_inference_duration_seconds"), "inference p95 {{variant}}", "B"),
            ],
            "s",
            "A rising queue p95 with a flat inference p95 means the device is saturated. Dots on the queue line are "
            "exemplars: a sampled request's queue wait, linked to its trace.",
        ),
        width=12,
    )

    layout.row("Batching")
    layout.add(
        timeseries(
            "Batch size p50 / p95",
            [
                target(quantile(0.5, "xnli_batch_size"), "p50 {{variant}}"),
                target(quantile(0.95, "xnli_batch_size"), "p95 {{variant}}", "B"),
            ],
            "short",
            "Pairs per forward pass; dynamic batching grows it under load.",
        )
    )
    layout.add(
        timeseries(
            "Padded tokens per batch p50 / p95",
            [
                target(quantile(0.5, "xnli_batch_tokens"), "p50 {{variant}}"),
                target(quantile(0.95, "xnli_batch_tokens"), "p95 {{variant}}", "B"),
            ],
            "short",
            "Pairs x padded length, the cost the device actually pays.",
        )
    )
    layout.add(
        timeseries(
            "Padding ratio (mean)",
            [
                target(
                    mean("xnli_batch_padding_ratio"),
                    "{{variant}}",
                )
            ],
            "percentunit",
            "Share of computed tokens that are padding; length grouping keeps it low.",
            **thresholds((None, "green"), (0.15, "orange"), (0.3, "red")),
            min=0,
        )
    )

    layout.row("Variants side by side")
    table_targets = [
        target(quantile(0.5, "xnli_request_duration_seconds"), "", "p50", instant=True, format="table"),
        target(quantile(0.99, "xnli_request_duration_seconds"), "", "p99", instant=True, format="table"),
        target(
            f"sum by (variant) (rate(xnli_requests_total{{{V}}}[$__rate_interval]))",
            "",
            "rps",
            instant=True,
            format="table",
        ),
        target(
            f"sum by (variant) (rate(xnli_predictions_total{{{V}}}[$__rate_interval]))",
            "",
            "pairs",
            instant=True,
            format="table",
        ),
        target(
            mean("xnli_batch_size"),
            "",
            "batch",
            instant=True,
            format="table",
        ),
        target(
            f"max by (variant, base_model, intermediate_task, device, dtype) (xnli_variant_info{{{V}}})",
            "",
            "info",
            instant=True,
            format="table",
        ),
    ]
    layout.add(
        {
            "type": "table",
            "title": "Variants compared",
            "description": "Current p50/p99 latency, request and pair rates, mean batch size, with catalogue metadata.",
            "targets": table_targets,
            "transformations": [
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "Value #info": True},
                        "renameByName": {
                            "Value #p50": "p50 (s)",
                            "Value #p99": "p99 (s)",
                            "Value #rps": "requests/s",
                            "Value #pairs": "pairs/s",
                            "Value #batch": "mean batch",
                        },
                    },
                },
            ],
            "fieldConfig": {"defaults": {"decimals": 3}, "overrides": []},
        },
        width=24,
        height=7,
    )

    layout.row("Variant comparison (live)")
    routed = 'route=~"split|sticky"'
    layout.add(
        timeseries(
            "Split shares",
            [
                target(
                    f"sum by (variant) (rate(xnli_routed_requests_total{{{V}, {routed}}}[$__rate_interval]))"
                    f" / ignoring (variant) group_left"
                    f" sum(rate(xnli_routed_requests_total{{{routed}}}[$__rate_interval]) > 0)",
                    "{{variant}}",
                )
            ],
            "percentunit",
            "Share of the requests that named no variant each variant answered: the catalogue's [traffic] split "
            "(weighted draws and sticky X-Routing-Key hashes). Requests that named a variant are not counted.",
            min=0,
            max=1,
        )
    )
    layout.add(
        timeseries(
            "Shadow agreement",
            [target(agreement("primary, candidate"), "{{candidate}} vs {{primary}}")],
            "percentunit",
            "Share of shadowed pairs on which the candidate's top label equals the primary's (the alert "
            "XnliServeCandidateAgreementLow fires below 90% for 15 minutes).",
            **thresholds((None, "red"), (0.9, "green")),
            min=0,
            max=1,
        )
    )
    layout.add(
        timeseries(
            "Shadow probability difference p50 / p95",
            [
                target(quantile(0.5, "xnli_shadow_probability_diff", "primary, candidate", P), "p50 {{candidate}}"),
                target(
                    quantile(0.95, "xnli_shadow_probability_diff", "primary, candidate", P), "p95 {{candidate}}", "B"
                ),
            ],
            "percentunit",
            "Per shadowed pair, the largest absolute difference between the two variants' probabilities.",
            min=0,
            max=1,
        )
    )
    layout.add(
        {
            "type": "table",
            "title": "Flip matrix (top label, primary x candidate)",
            "description": "Shadowed pairs over the dashboard's time range by the primary's top label (rows) and the "
            "candidate's (columns); the diagonal is agreement.",
            "targets": [
                target(
                    "sum by (primary, candidate, primary_label, candidate_label)"
                    f" (increase(xnli_shadow_pairs_total{{{P}}}[$__range]))",
                    "",
                    instant=True,
                    format="table",
                )
            ],
            "transformations": [
                {
                    "id": "groupingToMatrix",
                    "options": {"rowField": "primary_label", "columnField": "candidate_label", "valueField": "Value"},
                }
            ],
            "fieldConfig": {"defaults": {"decimals": 0}, "overrides": []},
        },
        width=8,
    )
    layout.add(
        {
            "type": "bargauge",
            "title": "Shadow agreement by language",
            "description": "Agreement per request `language` (the 15 XNLI languages, `other`, `unspecified`).",
            "targets": [target(agreement("primary, candidate, language"), "{{language}} {{candidate}}", instant=True)],
            "options": {"orientation": "horizontal", "displayMode": "basic", "showUnfilled": True},
            "fieldConfig": {
                "defaults": {"unit": "percentunit", "min": 0, "max": 1, **thresholds((None, "red"), (0.9, "green"))},
                "overrides": [],
            },
        },
        width=8,
    )
    layout.add(
        timeseries(
            "Shadow pairs compared and dropped",
            [
                target(
                    f"sum by (primary, candidate) (rate(xnli_shadow_pairs_total{{{P}}}[$__rate_interval]))",
                    "compared {{candidate}}",
                ),
                target(
                    f"sum by (candidate, reason) (rate(xnli_shadow_dropped_pairs_total{{{P}}}[$__rate_interval]))",
                    "dropped {{candidate}} {{reason}}",
                    "B",
                ),
            ],
            "short",
            "Pairs per second compared on each candidate, and dropped by reason (busy device, full shadow lane, "
            "expired, ...): shadows yield to client work and are dropped first, never silently.",
        ),
        width=8,
    )

    layout.row("Resources")
    layout.add(
        timeseries(
            "Process CPU",
            [target('rate(process_cpu_seconds_total{job="xnli-serve"}[$__rate_interval])', "{{instance}}")],
            "percentunit",
            "CPU seconds per second (1 = one core busy).",
        )
    )
    layout.add(
        timeseries(
            "Process memory",
            [target('process_resident_memory_bytes{job="xnli-serve"}', "{{instance}}")],
            "bytes",
            "Resident set size of each replica.",
        )
    )
    layout.add(
        timeseries(
            "CUDA memory allocated",
            [target("sum by (instance, device) (xnli_cuda_memory_allocated_bytes)", "{{instance}} {{device}}")],
            "bytes",
            "Bytes held by torch's CUDA allocator per GPU (absent on CPU replicas).",
        )
    )

    return {
        "uid": "xnli-serve",
        "title": "xnli-serve",
        "description": "Per-variant latency (queue vs compute), throughput, batching and resources of xnli-serve.",
        "tags": ["xnli-serve", "inference"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                {
                    # Tracing (issue #27): the trace data source exemplars open in (Tempo; a Jaeger one is picked
                    # by changing this query to "jaeger").
                    "name": TRACES_VARIABLE,
                    "label": "Traces",
                    "type": "datasource",
                    "query": "tempo",
                    "current": {},
                    "hide": 0,
                },
                {
                    "name": "variant",
                    "label": "Variant",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": {"query": "label_values(xnli_variant_info, variant)", "refId": "variants"},
                    "definition": "label_values(xnli_variant_info, variant)",
                    "refresh": 2,
                    "multi": True,
                    "includeAll": True,
                    "allValue": ".*",
                    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                    "sort": 1,
                    "hide": 0,
                },
            ]
        },
        "annotations": {"list": []},
        "panels": layout.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query in the dashboard."""
    found = []
    for panel in dashboard["panels"]:
        for query in panel.get("targets", []):
            found.append((panel["title"], query["expr"]))
    return found


if __name__ == "__main__":
    if "--check" in sys.argv:
        if OUTPUT.read_text(encoding="utf-8") != render():
            print(f"{OUTPUT} is out of date: run python deploy/grafana/dashboard.py", file=sys.stderr)
            sys.exit(1)
    else:
        OUTPUT.write_text(render(), encoding="utf-8")
        print(f"wrote {OUTPUT}")
