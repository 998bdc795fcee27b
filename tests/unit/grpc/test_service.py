"""Each RPC against the real engine: answers, the status of each refusal (never UNKNOWN), what is counted in the
request metrics, keys, drain, the deadline and a client that cancels."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY
from tritonclient.grpc import InferResult, service_pb2

from app.engine.contract import EngineRequest, EngineResult
from app.engine.engine import Engine
from app.grpc.proto import open_inference_pb2 as pb
from app.grpc.service import ENDPOINT, InferenceServicer, rpc_handlers
from app.metrics import UNKNOWN_VARIANT
from app.service import zero_shot
from app.service.prediction import PredictionService
from app.service.zero_shot import ZeroShotQuery
from tests.support.observability import KeptSpans, trace_into_memory
from tests.unit.grpc.conftest import API_KEY, Aborted, context
from tests.unit.grpc.test_messages import PAIRS, contents_message, tritonclient_message, zero_shot_message


def requests_total(variant: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("xnli_requests_total", {"variant": variant, "outcome": outcome}) or 0.0


def durations(variant: str) -> float:
    labels = {"variant": variant, "endpoint": ENDPOINT}
    return REGISTRY.get_sample_value("xnli_request_duration_seconds_count", labels) or 0.0


async def test_infer_answers_through_the_prediction_service(servicer: InferenceServicer) -> None:
    before = durations("xlmr-mnli"), requests_total("xlmr-mnli", "success")
    response = await servicer.ModelInfer(tritonclient_message(PAIRS), context())
    assert (response.model_name, response.model_version, response.id) == ("xlmr-mnli", "1", "req-1")
    assert [output.name for output in response.outputs] == ["label", "probabilities"]
    assert len(response.raw_output_contents) == 2
    assert (durations("xlmr-mnli"), requests_total("xlmr-mnli", "success")) == (before[0] + 1, before[1] + 1)


async def test_unknown_model_is_not_found_and_counted(servicer: InferenceServicer) -> None:
    message = contents_message(PAIRS)
    message.model_name = "nope"
    before = requests_total(UNKNOWN_VARIANT, "not_found")
    with pytest.raises(Aborted) as refused:
        await servicer.ModelInfer(message, context())
    assert refused.value.code is grpc.StatusCode.NOT_FOUND
    assert refused.value.metadata["xnli-error-type"] == "unknown_variant"
    assert requests_total(UNKNOWN_VARIANT, "not_found") == before + 1


def _version(message: pb.ModelInferRequest) -> None:
    message.model_version = "2"


def _no_name(message: pb.ModelInferRequest) -> None:
    message.model_name = ""


def _too_many(message: pb.ModelInferRequest) -> None:
    for tensor in message.inputs:
        tensor.shape[0] = 65


def _datatype(message: pb.ModelInferRequest) -> None:
    message.inputs[0].datatype = "FP32"


def _priority(message: pb.ModelInferRequest) -> None:
    message.parameters["priority"].string_param = "urgent"


INVALID = (grpc.StatusCode.INVALID_ARGUMENT, "invalid_inference_request")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_version, (grpc.StatusCode.NOT_FOUND, "unknown_version")),
        (_no_name, INVALID),
        (_too_many, (grpc.StatusCode.INVALID_ARGUMENT, "too_many_pairs")),
        (_datatype, INVALID),
        (_priority, INVALID),
    ],
    ids=["version", "no-name", "too-many-pairs", "datatype", "priority"],
)
async def test_refusals_before_the_engine_are_counted_client_errors(
    servicer: InferenceServicer, edit: Any, expected: tuple[grpc.StatusCode, str]
) -> None:
    code, error_type = expected
    message = contents_message(PAIRS)
    edit(message)
    variant = "xlmr-mnli" if message.model_name else UNKNOWN_VARIANT  # known once the name resolves, as over HTTP
    outcome = "not_found" if code is grpc.StatusCode.NOT_FOUND else "client_error"
    before = requests_total(variant, outcome)
    with pytest.raises(Aborted) as refused:
        await servicer.ModelInfer(message, context())
    assert (refused.value.code, refused.value.metadata["xnli-error-type"]) == (code, error_type)
    assert requests_total(variant, outcome) == before + 1


async def test_a_request_larger_than_the_queue(servicer: InferenceServicer) -> None:
    message = contents_message([("a", "b")] * 9)
    message.model_name = "small-queue"  # max_queue_pairs = 8
    with pytest.raises(Aborted) as refused:
        await servicer.ModelInfer(message, context())
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.metadata["xnli-error-details"] == '[{"limit":8}]'


@pytest.mark.parametrize(
    ("metadata", "message"),
    [((), "missing API key"), ((("authorization", "Bearer wrong-key-0123456789"),), "invalid API key")],
)
async def test_keys_are_checked_on_every_rpc(
    keyed_servicer: InferenceServicer, metadata: tuple[tuple[str, str], ...], message: str
) -> None:
    for call in (
        keyed_servicer.ServerReady(pb.ServerReadyRequest(), context(metadata)),
        keyed_servicer.ModelInfer(contents_message(PAIRS), context(metadata)),
    ):
        with pytest.raises(Aborted, match=message) as refused:
            await call
        assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED


async def test_the_right_key_passes(keyed_servicer: InferenceServicer) -> None:
    answer = await keyed_servicer.ServerLive(pb.ServerLiveRequest(), context([("authorization", f"Bearer {API_KEY}")]))
    assert answer.live


async def test_health_and_metadata(servicer: InferenceServicer) -> None:
    assert (await servicer.ServerReady(pb.ServerReadyRequest(), context())).ready
    assert (await servicer.ModelReady(pb.ModelReadyRequest(name="xlmr-mnli"), context())).ready
    metadata = await servicer.ModelMetadata(pb.ModelMetadataRequest(name="xlmr-mnli"), context())
    assert [tensor.name for tensor in metadata.inputs] == ["premise", "hypothesis"]
    assert list(metadata.outputs[1].shape) == [-1, 3]
    server = await servicer.ServerMetadata(pb.ServerMetadataRequest(), context())
    assert list(server.extensions) == ["model_repository"]


async def test_draining_refuses_infer_unavailable_and_readiness_says_so(
    servicer: InferenceServicer, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine.gate, "draining", True)
    assert not (await servicer.ServerReady(pb.ServerReadyRequest(), context())).ready
    assert not (await servicer.ModelReady(pb.ModelReadyRequest(name="xlmr-mnli"), context())).ready
    with pytest.raises(Aborted) as refused:
        await servicer.ModelInfer(contents_message(PAIRS), context())
    assert refused.value.code is grpc.StatusCode.UNAVAILABLE
    assert refused.value.metadata["retry-after"] == "1"


async def test_a_deadline_already_spent(servicer: InferenceServicer) -> None:
    with pytest.raises(Aborted) as refused:
        await servicer.ModelInfer(contents_message(PAIRS), context(remaining_s=0.001))
    assert refused.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_client_that_cancels_is_counted_disconnected(
    servicer: InferenceServicer, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted = asyncio.Event()

    async def never_answers(request: EngineRequest) -> EngineResult:
        submitted.set()
        await asyncio.sleep(60)
        raise AssertionError("not cancelled")

    monkeypatch.setattr(engine, "submit", never_answers)
    before = requests_total("xlmr-mnli", "disconnected")
    call = asyncio.ensure_future(servicer.ModelInfer(contents_message(PAIRS), context()))
    await asyncio.wait_for(submitted.wait(), 5)
    call.cancel()  # what grpc.aio does to the handler when its client cancels
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(100):  # the prediction ends in its own task, right after
        if requests_total("xlmr-mnli", "disconnected") > before:
            break
        await asyncio.sleep(0.01)
    assert requests_total("xlmr-mnli", "disconnected") == before + 1


async def test_an_unexpected_error_is_internal_not_unknown(
    servicer: InferenceServicer, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(engine, "repository_index", broken)
    with pytest.raises(Aborted) as refused:
        await servicer.RepositoryIndex(pb.RepositoryIndexRequest(), context())
    assert refused.value.code is grpc.StatusCode.INTERNAL
    assert refused.value.metadata["xnli-error-type"] == "internal_error"


async def test_repository_index(servicer: InferenceServicer) -> None:
    index = await servicer.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), context())
    assert {(model.name, model.state) for model in index.models} == {("xlmr-mnli", "READY"), ("small-queue", "READY")}


@pytest.mark.parametrize(
    "call",
    [
        lambda servicer: servicer.RepositoryIndex(pb.RepositoryIndexRequest(repository_name="other"), context()),
        lambda servicer: servicer.RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(
                model_name="xlmr-mnli", parameters={"config": pb.ModelRepositoryParameter(string_param="{}")}
            ),
            context(),
        ),
        lambda servicer: servicer.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(
                model_name="xlmr-mnli", parameters={"unload_dependents": pb.ModelRepositoryParameter(int64_param=1)}
            ),
            context(),
        ),
    ],
    ids=["repository-name", "load-parameters", "unload-dependents-type"],
)
async def test_repository_requests_we_do_not_take(servicer: InferenceServicer, call: Any) -> None:
    with pytest.raises(Aborted) as refused:
        await call(servicer)
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT


async def test_unloading_an_unknown_model(servicer: InferenceServicer) -> None:
    with pytest.raises(Aborted) as refused:
        await servicer.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="nope"), context())
    assert refused.value.code is grpc.StatusCode.NOT_FOUND


def test_every_rpc_of_the_proto_is_served(servicer: InferenceServicer) -> None:
    handler: Any = rpc_handlers(servicer)
    methods = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
    assert {f"/inference.GRPCInferenceService/{method.name}" for method in methods} == set(handler._method_handlers)


async def test_a_message_that_does_not_parse_is_invalid_argument(servicer: InferenceServicer) -> None:
    handler: Any = rpc_handlers(servicer)
    infer = handler._method_handlers["/inference.GRPCInferenceService/ModelInfer"].unary_unary
    with pytest.raises(Aborted) as refused:
        await infer(b"\x0a\xff", context())  # field 1 with a length past the end
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.metadata["xnli-error-type"] == "invalid_inference_request"


# -- zero-shot (issue #26) and tracing (issue #27) over gRPC --------------------------------------------------------

ZERO_SHOT_TEXTS = ["Der Zug nach Hamburg hat zwanzig Minuten Verspätung.", "Команда выиграла финал в серии пенальти."]
ZERO_SHOT_LABELS = ["Reisen", "Sport", "Politik"]


@pytest.mark.parametrize("multi_label", [False, True])
async def test_zero_shot_infer_answers_as_the_zero_shot_service(servicer: InferenceServicer, multi_label: bool) -> None:
    message = zero_shot_message(ZERO_SHOT_TEXTS, ZERO_SHOT_LABELS, hypothesis_template="Es geht um {}.")
    message.parameters["multi_label"].bool_param = multi_label
    before = durations("xlmr-mnli")
    response = await servicer.ModelInfer(message, context())
    answer = InferResult(service_pb2.ModelInferResponse.FromString(response.SerializeToString()))
    labels, scores = answer.as_numpy("labels"), answer.as_numpy("scores")

    asked = ZeroShotQuery(ZERO_SHOT_TEXTS, ZERO_SHOT_LABELS, "Es geht um {}.", multi_label, variant="xlmr-mnli")
    planned = zero_shot.plan(servicer.service, asked)
    expected = planned.classify(await servicer.service.predict(planned.query, "test"))
    assert labels is not None
    assert scores is not None
    assert [[label.decode() for label in row] for row in labels] == [list(each.labels) for each in expected]
    np.testing.assert_allclose(scores, [each.scores for each in expected], rtol=0, atol=1e-6)
    assert durations("xlmr-mnli") == before + 1  # one request, counted once, however many label pairs it made


async def test_a_zero_shot_rule_broken_is_invalid_argument(servicer: InferenceServicer) -> None:
    message = zero_shot_message(ZERO_SHOT_TEXTS, ZERO_SHOT_LABELS, hypothesis_template="no placeholder")
    before = requests_total("xlmr-mnli", "client_error")
    with pytest.raises(Aborted) as refused:
        await servicer.ModelInfer(message, context())
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "{}" in refused.value.details
    assert requests_total("xlmr-mnli", "client_error") == before + 1


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def kept(monkeypatch: pytest.MonkeyPatch) -> KeptSpans:
    return trace_into_memory(monkeypatch)


async def test_a_call_joins_its_callers_trace_and_answers_traceparent(
    servicer: InferenceServicer, kept: KeptSpans
) -> None:
    """issue #27: traceparent in the call's metadata is the server span's parent, as over HTTP, and the call's initial
    metadata names the server span; the request's phases are children in the same trace."""
    call = context([("traceparent", f"00-{TRACE}-00f067aa0ba902b7-01")])
    await servicer.ModelInfer(tritonclient_message(PAIRS), call)
    server = next(span for span in kept.spans if span.name == "inference.GRPCInferenceService/ModelInfer")
    assert server.kind is SpanKind.SERVER
    assert server.parent is not None
    assert server.parent.span_id == 0x00F067AA0BA902B7
    assert {f"{span.context.trace_id:032x}" for span in kept.spans} == {TRACE}
    assert len(kept.spans) > 1  # the request's own phases, not only the server span
    (sent,) = call.initial_metadata
    assert sent[0] == "traceparent"
    assert sent[1] == f"00-{TRACE}-{server.context.span_id:016x}-01"


async def test_probes_make_no_span(servicer: InferenceServicer, kept: KeptSpans) -> None:
    await servicer.ServerLive(pb.ServerLiveRequest(), context([("traceparent", f"00-{TRACE}-00f067aa0ba902b7-01")]))
    assert kept.spans == []


async def test_calls_beyond_the_limit_are_overloaded_but_probes_still_answer(engine: Engine) -> None:
    """As the HTTP edge sheds requests past XNLI_SERVE_MAX_INFLIGHT_REQUESTS but never its probes."""
    servicer = InferenceServicer(engine, PredictionService(engine, 64), 64, max_calls=1)
    release = asyncio.Event()

    async def held(call: object) -> str:
        await release.wait()
        return "answered"

    first = asyncio.ensure_future(servicer._serve("ModelInfer", context(), held))
    await asyncio.sleep(0)
    assert servicer.calls == 1
    with pytest.raises(Aborted) as refused:
        await servicer.ModelMetadata(pb.ModelMetadataRequest(name="xlmr-mnli"), context())
    assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.metadata["xnli-error-type"] == "overloaded"
    assert refused.value.metadata["retry-after"] == "1"
    assert "limit of 1 calls at once" in refused.value.details
    assert (await servicer.ServerReady(pb.ServerReadyRequest(), context())).ready
    release.set()
    assert await first == "answered"
    assert servicer.calls == 0
    assert (await servicer.ModelMetadata(pb.ModelMetadataRequest(name="xlmr-mnli"), context())).name == "xlmr-mnli"
