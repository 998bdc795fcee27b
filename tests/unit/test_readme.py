"""The docs say what the code does.

docs/operations.md's metrics table lists every metric app/metrics.py defines, with its labels and outcome values; its
settings table names every setting app/settings.py reads. Every relative link in README.md and docs/*.md names a file
that exists (and a heading there, when it names one), and every docs page is linked from the README.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from app import metrics
from app.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
OPERATIONS = DOCS / "operations.md"

METRIC_ROW = re.compile(r"^\|\s*(`xnli_[^|]+)\|([^|]*)\|([^|]*)\|$")
SETTING_ROW = re.compile(r"^\|\s*(`XNLI_SERVE_[^|]+)\|")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
ENV_PREFIX = "XNLI_SERVE_"


def documented_metrics() -> dict[str, tuple[set[str], str]]:
    """Metric name (as scraped: counters with ``_total``) -> the labels and the meaning docs/operations.md gives it."""
    rows: dict[str, tuple[set[str], str]] = {}
    for line in OPERATIONS.read_text(encoding="utf-8").splitlines():
        match = METRIC_ROW.match(line)
        if match:
            labels = {label.strip() for label in match[2].split(",") if label.strip()}
            for name in re.findall(r"`(xnli_\w+)`", match[1]):
                rows[name] = (labels, match[3])
    return rows


def defined_metrics() -> dict[str, tuple[str, ...]]:
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


def documented_settings() -> set[str]:
    """Environment variables the settings table names; ``_SUFFIX`` after a full name means ``XNLI_SERVE_SUFFIX``."""
    names = set()
    for line in OPERATIONS.read_text(encoding="utf-8").splitlines():
        match = SETTING_ROW.match(line)
        if match:
            for name in re.findall(r"`(_?[A-Z0-9_]+)`", match[1]):
                names.add(ENV_PREFIX + name[1:] if name.startswith("_") else name)
    return names


def test_every_metric_is_in_the_metrics_table_with_its_labels() -> None:
    rows = documented_metrics()
    documented = {name: labels for name, (labels, _) in rows.items() if name != "xnli_cuda_memory_allocated_bytes"}
    assert documented == {name: set(labels) for name, labels in defined_metrics().items()}
    assert rows["xnli_cuda_memory_allocated_bytes"][0] == {"device"}  # the collector's family, read at scrape time


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("xnli_requests_total", listed_in_help(metrics.REQUESTS, "by outcome")),
        ("xnli_shadow_dropped_pairs_total", list(metrics.SHADOW_DROP_REASONS)),
    ],
)
def test_the_metrics_table_lists_every_label_value(name: str, values: list[str]) -> None:
    meaning = documented_metrics()[name][1]
    listed = re.findall(r"[a-z_]+", re.sub(r"\([^)]*\)", "", meaning))  # parenthesised notes left out
    assert listed == values


def test_the_settings_table_names_every_setting_and_no_other() -> None:
    read = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert documented_settings() == read


def markdown_pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose(text: str) -> list[str]:
    """The page's lines outside fenced code blocks, inline code removed: links and headings, never examples."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return lines


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings: lower case, punctuation dropped, spaces as hyphens, repeats -1, -2..."""
    anchors: set[str] = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not heading:
            continue
        anchor = re.sub(r"[^\w\- ]", "", heading[1].lower()).replace(" ", "-")
        unique, repeat = anchor, 0
        while unique in anchors:
            repeat += 1
            unique = f"{anchor}-{repeat}"
        anchors.add(unique)
    return anchors


def relative_links(page: Path) -> list[str]:
    """Each link target the page gives, once, in order; http:, https: and mailto: links are not checked."""
    found = [target for line in prose(page.read_text(encoding="utf-8")) for target in LINK.findall(line)]
    return [target for target in dict.fromkeys(found) if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]


LINKS = [(page, target) for page in markdown_pages() for target in relative_links(page)]


@pytest.mark.parametrize(
    ("page", "target"), LINKS, ids=[f"{page.relative_to(REPO_ROOT)}->{target}" for page, target in LINKS]
)
def test_relative_link_resolves(page: Path, target: str) -> None:
    path, _, anchor = target.partition("#")
    named = (page.parent / path).resolve() if path else page
    assert named.exists(), f"{page.relative_to(REPO_ROOT)} links to {path}, which does not exist"
    if anchor and named.suffix == ".md":
        assert anchor in heading_anchors(named), f"{named.relative_to(REPO_ROOT)} has no heading #{anchor}"


def test_the_readme_links_every_docs_page() -> None:
    linked = {(REPO_ROOT / target.partition("#")[0]).resolve() for target in relative_links(README)}
    assert {page.resolve() for page in DOCS.glob("*.md")} <= linked
