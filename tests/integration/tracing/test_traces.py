"""A real server exporting to a real OTLP/HTTP receiver: the span tree of one request, of a batch serving several
(links), of a shadow, of a 429 and a 422, and the trace context in and out over HTTP."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.tracing.receiver import OtlpReceiver, ReceivedSpan, tree
from tests.integration.tracing.conftest import NARROW_PAIRS, traced_catalogue, traced_env
from tests.support.helpers import ServerProcess, running_server

pytestmark = [pytest.mark.integration]

SERVER_KIND = 2
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
PAIR = {"premise": "The ferry left the harbour at dawn.", "hypothesis": "A boat departed early."}


@pytest.fixture(scope="module")
def server(
    demo_store: Path, receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("traced")
    with running_server(traced_catalogue(folder, demo_store), folder, traced_env(receiver)) as process:
        yield process


def trace_of(response: httpx.Response) -> tuple[str, str]:
    """(trace id, span id) of the ``traceparent`` a response carries."""
    version, trace_id, span_id, flags = response.headers["traceparent"].split("-")
    assert version == "00"
    assert int(flags, 16) & 1  # sampled (the SDK also sets 0x02, "random trace id", on traces it starts)
    return trace_id, span_id


def spans_of(receiver: OtlpReceiver, trace_id: str, *names: str) -> list[ReceivedSpan]:
    """The trace's spans once every name in ``names`` arrived."""

    def arrived(spans: list[ReceivedSpan]) -> bool:
        present = [span.name for span in spans if span.trace_id == trace_id]
        return all(present.count(name) >= names.count(name) for name in set(names))

    return [span for span in receiver.wait_for(arrived) if span.trace_id == trace_id]


def one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, (name, [span.name for span in spans])
    return found[0]


def test_one_request_is_one_trace_of_its_phases_in_the_callers_context(
    server: ServerProcess, receiver: OtlpReceiver
) -> None:
    response = httpx.post(
        f"{server.base_url}/predict",
        json={**PAIR, "variant": "solo", "priority": "batch"},
        headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", "x-request-id": "trace-me-1"},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-me-1"  # the request id stays beside the trace
    trace_id, span_id = trace_of(response)
    assert trace_id == CLIENT_TRACE
    assert span_id != CLIENT_SPAN
    spans = spans_of(receiver, trace_id, "POST /predict", "engine request", "device batch", "queue wait")
    children = tree(spans, trace_id)
    server_span = one(spans, "POST /predict")
    assert (server_span.span_id, server_span.parent_span_id, server_span.kind) == (span_id, CLIENT_SPAN, SERVER_KIND)
    assert (
        server_span.attributes | {"http.route": "/predict", "http.response.status_code": 200} == server_span.attributes
    )
    assert {key: server_span.attributes[key] for key in ("xnli.variant", "xnli.priority", "xnli.pairs")} == {
        "xnli.variant": "solo",
        "xnli.priority": "batch",
        "xnli.pairs": 1,
    }
    assert server_span.attributes["xnli.outcome"] == "success"
    assert server_span.attributes["xnli.request_id"] == "trace-me-1"
    assert server_span.resource["service.name"] == "xnli-test"
    engine = one(children[server_span.span_id], "engine request")
    phases = {span.name: span for span in children[engine.span_id]}
    assert set(phases) == {"admission", "tokenization", "queue wait", "device batch"}
    batch = phases["device batch"]
    assert batch.attributes["xnli.batch.rows"] == 1
    assert batch.attributes["xnli.batch.padded_length"] >= 8
    assert (batch.attributes["xnli.backend"], batch.attributes["xnli.device"]) == ("torch", "cpu")
    assert phases["queue wait"].links == [(trace_id, batch.span_id)]
    # The phases follow each other inside the request's span.
    assert server_span.start_ns <= engine.start_ns <= phases["admission"].start_ns
    assert phases["admission"].end_ns <= phases["tokenization"].end_ns <= phases["queue wait"].end_ns
    assert phases["queue wait"].end_ns <= batch.start_ns + 1_000
    assert batch.end_ns <= engine.end_ns


def test_a_request_without_trace_context_starts_a_trace_and_gets_its_traceparent(
    server: ServerProcess, receiver: OtlpReceiver
) -> None:
    response = httpx.get(f"{server.base_url}/variants")
    trace_id, span_id = trace_of(response)
    span = one(spans_of(receiver, trace_id, "GET /variants"), "GET /variants")
    assert (span.span_id, span.parent_span_id) == (span_id, "")


def test_a_malformed_traceparent_starts_a_new_trace(server: ServerProcess, receiver: OtlpReceiver) -> None:
    response = httpx.post(f"{server.base_url}/predict", json=PAIR, headers={"traceparent": "00-zz-yy-01"})
    assert response.status_code == 200
    trace_id, _ = trace_of(response)
    assert one(spans_of(receiver, trace_id, "POST /predict"), "POST /predict").parent_span_id == ""


def test_one_batch_serving_several_requests_is_linked_from_each(server: ServerProcess, receiver: OtlpReceiver) -> None:
    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            return await asyncio.gather(*(http.post("/predict", json={**PAIR, "variant": "solo"}) for _ in range(3)))

    traces = [trace_of(response)[0] for response in asyncio.run(send())]
    assert len(set(traces)) == 3
    spans = [span for trace_id in traces for span in spans_of(receiver, trace_id, "queue wait", "engine request")]
    engines = {span.trace_id: span for span in spans if span.name == "engine request"}
    batches = [span for span in receiver.snapshot() if span.name == "device batch" and span.trace_id in traces]
    assert len(batches) == 1, "the three requests waited 400 ms for each other: one batch"
    batch = batches[0]
    assert (batch.attributes["xnli.batch.rows"], batch.attributes["xnli.batch.requests"]) == (3, 3)
    parent = next(engine for engine in engines.values() if engine.span_id == batch.parent_span_id)
    # A child of one request's span, linked to the two others ...
    assert sorted(batch.links) == sorted(
        (engine.trace_id, engine.span_id) for engine in engines.values() if engine is not parent
    )
    # ... and linked from every request it served.
    for span in spans:
        if span.name == "queue wait":
            assert span.links == [(batch.trace_id, batch.span_id)]


def test_a_shadow_is_its_own_trace_linked_to_the_primary(server: ServerProcess, receiver: OtlpReceiver) -> None:
    response = httpx.post(f"{server.base_url}/predict", json={**PAIR, "variant": "shadowed"})
    assert response.status_code == 200
    trace_id, _ = trace_of(response)
    primary = one(spans_of(receiver, trace_id, "engine request"), "engine request")

    def shadowed(spans: list[ReceivedSpan]) -> bool:
        return any(span.name == "shadow" and (trace_id, primary.span_id) in span.links for span in spans)

    shadow = next(
        span
        for span in receiver.wait_for(shadowed)
        if span.name == "shadow" and span.links == [(trace_id, primary.span_id)]
    )
    assert shadow.trace_id != trace_id
    assert shadow.parent_span_id == ""
    assert shadow.attributes | {"xnli.primary": "shadowed", "xnli.candidate": "candidate"} == shadow.attributes
    assert shadow.attributes["xnli.shadow.outcome"] == "compared"
    batch = one(spans_of(receiver, shadow.trace_id, "device batch"), "device batch")
    assert batch.parent_span_id == shadow.span_id
    assert (batch.attributes["xnli.variant"], batch.attributes["xnli.priority"]) == ("candidate", "shadow")


def test_a_429_shows_the_refused_admission(server: ServerProcess, receiver: OtlpReceiver) -> None:
    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            full = {"inputs": [PAIR] * NARROW_PAIRS, "variant": "narrow"}
            first = asyncio.create_task(http.post("/predict", json=full))
            await asyncio.sleep(0.2)  # its pairs fill the queue, and wait 600 ms for more
            return [await http.post("/predict", json={**PAIR, "variant": "narrow"}), await first]

    answers = asyncio.run(send())
    # Whichever was admitted first holds the queue (the full one, nearly always): the other is refused.
    assert sorted(response.status_code for response in answers) == [200, 429]
    refused = next(response for response in answers if response.status_code == 429)
    trace_id, _ = trace_of(refused)
    spans = spans_of(receiver, trace_id, "POST /predict", "engine request", "admission")
    server_span = one(spans, "POST /predict")
    assert server_span.attributes["http.response.status_code"] == 429
    assert server_span.attributes["xnli.outcome"] == "overloaded"
    assert server_span.status == 0  # a client's 4xx is no server error
    engine = one(spans, "engine request")
    assert (engine.attributes["error.type"], engine.status) == ("overloaded", 2)
    admission = one(spans, "admission")
    assert (admission.parent_span_id, admission.status) == (engine.span_id, 2)
    assert not [span for span in spans if span.name in ("tokenization", "queue wait", "device batch")]


def test_a_422_is_a_server_span_and_nothing_more(server: ServerProcess, receiver: OtlpReceiver) -> None:
    response = httpx.post(f"{server.base_url}/predict", json={"premise": "only half a pair"})
    assert response.status_code == 422
    trace_id, span_id = trace_of(response)
    spans = spans_of(receiver, trace_id, "POST /predict")
    server_span = one(spans, "POST /predict")
    assert server_span.span_id == span_id
    assert server_span.attributes["http.response.status_code"] == 422
    assert [span.name for span in spans] == ["POST /predict"]  # refused before the service: no engine span


def test_openmetrics_scrapes_carry_trace_ids_as_exemplars(server: ServerProcess, receiver: OtlpReceiver) -> None:
    response = httpx.post(f"{server.base_url}/predict", json={**PAIR, "variant": "solo"})
    trace_id, _ = trace_of(response)
    classic = httpx.get(f"{server.base_url}/metrics")
    assert classic.headers["content-type"].startswith("text/plain")
    assert "trace_id" not in classic.text  # the classic text format has no exemplars
    scraped = httpx.get(f"{server.base_url}/metrics", headers={"accept": OPENMETRICS})
    assert scraped.headers["content-type"].startswith("application/openmetrics-text")
    assert scraped.text.endswith("# EOF\n")
    exemplars = {
        name: set(
            re.findall(
                rf'^{name}_bucket{{[^}}]*variant="solo"[^}}]*}} \S+ # {{trace_id="([0-9a-f]{{32}})"}}',
                scraped.text,
                re.M,
            )
        )
        for name in ("xnli_request_duration_seconds", "xnli_queue_duration_seconds")
    }
    # Each bucket keeps its latest exemplar: this request's is there unless a later one fell in the same bucket.
    assert all(exemplars.values()), exemplars
    sampled = {span.trace_id for span in receiver.snapshot()}
    assert exemplars["xnli_request_duration_seconds"] <= sampled
    assert exemplars["xnli_queue_duration_seconds"] <= sampled
    assert trace_id in sampled
