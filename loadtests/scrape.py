"""Read a service's Prometheus exposition and the change of its samples over a measured window.

The load tests, the benchmarks and the tests read the same numbers the same way: one parse (prometheus_client's own
parser), one sum over the samples whose labels include the ones asked for, and one difference between two scrapes.
"""

from __future__ import annotations

from typing import TypeAlias

import httpx
from prometheus_client.parser import text_string_to_metric_families

SampleKey: TypeAlias = tuple[str, tuple[tuple[str, str], ...]]  # name, sorted labels
MetricSamples: TypeAlias = dict[SampleKey, float]


def parse(text: str) -> MetricSamples:
    """Every sample of an exposition, keyed by its name and its sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(source: httpx.Client | str, path: str = "/metrics") -> MetricSamples:
    """The samples a service exposes now: ``source`` is a client with a base URL, or the service's base URL."""
    response = source.get(path) if isinstance(source, httpx.Client) else httpx.get(f"{source.rstrip('/')}{path}")
    response.raise_for_status()
    return parse(response.text)


def total(samples: MetricSamples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(
        value
        for (sample_name, sample_labels), value in samples.items()
        if sample_name == name and wanted <= set(sample_labels)
    )


def delta(before: MetricSamples, after: MetricSamples, name: str, **labels: str) -> float:
    """Change, from ``before`` to ``after``, of the samples called ``name`` whose labels include ``labels``, summed
    (a sample absent before counts from 0)."""
    return total(after, name, **labels) - total(before, name, **labels)
