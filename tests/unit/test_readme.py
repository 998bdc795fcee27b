"""The README's metrics table says what app/metrics.py defines: every metric, its labels, its outcome values."""

from __future__ import annotations

import re

import pytest
from prometheus_client.metrics import MetricWrapperBase

from app import metrics
from tests.conftest import REPO_ROOT

ROW = re.compile(r"^\|\s*(`xnli_[^|]+)\|([^|]*)\|([^|]*)\|$")


def readme_rows() -> dict[str, tuple[set[str], str]]:
    """Metric name (as scraped: counters with ``_total``) -> the labels and the meaning the README gives it."""
    rows: dict[str, tuple[set[str], str]] = {}
    for line in (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            labels = {label.strip() for label in match[2].split(",") if label.strip()}
            for name in re.findall(r"`(xnli_\w+)`", match[1]):
                rows[name] = (labels, match[3])
    return rows


def defined() -> dict[str, tuple[str, ...]]:
    found = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            suffix = "_total" if value._type == "counter" else ""
            found[value._name + suffix] = tuple(value._labelnames)
    return found


def listed_in_help(metric: MetricWrapperBase, words: str) -> list[str]:
    """The values a metric's help lists in parentheses after ``words``: "by outcome (success, ...)"."""
    found = re.search(re.escape(words) + r" \(([^)]*)\)", metric._documentation)
    assert found, f"{metric._name}'s help lists no values after {words!r}"
    return re.findall(r"[a-z_]+", found[1])


def test_every_metric_is_in_the_readme_with_its_labels() -> None:
    rows = readme_rows()
    documented = {name: labels for name, (labels, _) in rows.items() if name != "xnli_cuda_memory_allocated_bytes"}
    assert documented == {name: set(labels) for name, labels in defined().items()}
    assert rows["xnli_cuda_memory_allocated_bytes"][0] == {"device"}  # the collector's family, read at scrape time


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("xnli_requests_total", listed_in_help(metrics.REQUESTS, "by outcome")),
        ("xnli_shadow_dropped_pairs_total", list(metrics.SHADOW_DROP_REASONS)),
    ],
)
def test_the_readme_lists_every_label_value(name: str, values: list[str]) -> None:
    meaning = readme_rows()[name][1]
    listed = re.findall(r"[a-z_]+", re.sub(r"\([^)]*\)", "", meaning))  # parenthesised notes left out
    assert listed == values
