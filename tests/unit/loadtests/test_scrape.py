"""The one reader of a Prometheus exposition: parse, sum by label subset, change between two scrapes."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from loadtests import scrape


def exposition(requests: dict[tuple[str, str], int], latencies: list[float]) -> str:
    registry = CollectorRegistry()
    counter = Counter("xnli_requests", "Requests.", ["variant", "outcome"], registry=registry)
    for (variant, outcome), count in requests.items():
        counter.labels(variant=variant, outcome=outcome).inc(count)
    histogram = Histogram("xnli_batch_size", "Batch sizes.", ["variant"], buckets=(1, 8), registry=registry)
    for value in latencies:
        histogram.labels(variant="a").observe(value)
    return generate_latest(registry).decode()


BEFORE = exposition({("a", "ok"): 3, ("a", "error"): 1}, [2.0])
AFTER = exposition({("a", "ok"): 10, ("a", "error"): 1, ("b", "ok"): 4}, [2.0, 4.0, 9.0])


@pytest.mark.parametrize(
    ("name", "labels", "expected"),
    [
        ("xnli_requests_total", {}, 15.0),  # every label set
        ("xnli_requests_total", {"variant": "a"}, 11.0),  # a subset of the labels
        ("xnli_requests_total", {"variant": "a", "outcome": "ok"}, 10.0),
        ("xnli_requests_total", {"variant": "c"}, 0.0),  # none match
        ("xnli_batch_size_sum", {"variant": "a"}, 15.0),
        ("xnli_batch_size_bucket", {"variant": "a", "le": "8.0"}, 2.0),
        ("xnli_batch_size_count", {"variant": "a"}, 3.0),
    ],
)
def test_total_sums_the_samples_whose_labels_include_the_ones_asked(
    name: str, labels: dict[str, str], expected: float
) -> None:
    assert scrape.total(scrape.parse(AFTER), name, **labels) == expected


@pytest.mark.parametrize(
    ("labels", "expected"),
    [({"variant": "a"}, 7.0), ({"variant": "b"}, 4.0), ({"outcome": "error"}, 0.0), ({}, 11.0)],
)
def test_delta_counts_a_sample_absent_before_from_zero(labels: dict[str, str], expected: float) -> None:
    before, after = scrape.parse(BEFORE), scrape.parse(AFTER)
    assert scrape.delta(before, after, "xnli_requests_total", **labels) == expected


def test_parse_keys_samples_by_name_and_sorted_labels() -> None:
    samples = scrape.parse(BEFORE)
    assert samples[("xnli_requests_total", (("outcome", "ok"), ("variant", "a")))] == 3.0


def test_scrape_reads_a_client_or_a_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path != "/metrics":
            return httpx.Response(404)
        return httpx.Response(200, text=AFTER)

    transport = httpx.MockTransport(answer)
    with httpx.Client(base_url="http://service", transport=transport) as client:
        assert scrape.scrape(client) == scrape.parse(AFTER)

    def get(url: str) -> httpx.Response:
        with httpx.Client(transport=transport) as client:
            return client.get(url)

    monkeypatch.setattr(httpx, "get", get)
    assert scrape.scrape("http://service/") == scrape.parse(AFTER)


def test_scrape_refuses_an_error_answer() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(401, json={"error": "unauthorized"}))
    with httpx.Client(base_url="http://service", transport=transport) as client, pytest.raises(httpx.HTTPStatusError):
        scrape.scrape(client)
