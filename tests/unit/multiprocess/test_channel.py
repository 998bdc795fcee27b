"""The wire format: every message kind crosses typed and unchanged, results bit for bit, engine errors with their type
and attributes (so the API answers them as in one process); a frame of another protocol version is refused."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest

from app.api.errors import from_engine
from app.engine.contract import EncodedInputs, EngineRequest, EngineResult, Priority, Timings
from app.engine.errors import EngineError, error_type
from app.engine.status import RepositoryEntry, RepositoryState, VariantStatus
from app.multiprocess import channel
from app.multiprocess.wire import ProtocolError, Schema
from tests.support.helpers import ENGINE_ERRORS, REPOSITORY_ERRORS

ERRORS = [*ENGINE_ERRORS, *REPOSITORY_ERRORS]
PROBABILITIES = np.random.default_rng(7).dirichlet(np.ones(3), size=4).astype(np.float32)
RESULT = EngineResult("alpha", PROBABILITIES, [True, False, False, True], Timings(1e-4, 2.0, 3.0, 4.0))

REQUESTS: list[channel.Request] = [
    channel.SubmitMessage(1, EngineRequest([("a", "b"), ("c", "d")], "alpha")),
    channel.SubmitMessage(
        2,
        EngineRequest(
            [("a", "b")],
            "beta",
            truncate=False,
            timeout_s=0.5,
            priority=Priority.BATCH,
            language="fr",
            spent_s=0.01,
            encoded=EncodedInputs([[0, 17, 2]], [False], "f00d"),
            request_id="abc123",
            # Tracing (issue #27): the front end's W3C trace context crosses to the engine process.
            trace_context={
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "tracestate": "k=v",
            },
        ),
    ),
    channel.CancelMessage(3),
    *(channel.CallMessage(4, method, "alpha", 16) for method in channel.EngineCall),
    channel.CallMessage(5, channel.EngineCall.REPOSITORY_INDEX),
]
REPLIES: list[channel.Reply] = [
    channel.RepositoryReply(
        7, [RepositoryEntry("alpha", RepositoryState.READY, ""), RepositoryEntry("beta", RepositoryState.LOADING, "")]
    ),
    channel.MetricsReply(8, b"# HELP xnli_requests_total ...\n"),
    channel.DoneReply(9),
    channel.ErrorReply(10, "OverloadedError", "the queue is full", {"retry_after_s": 3.0}),
    channel.FailedReply(11, "RuntimeError: broken"),
]
STATE = channel.EngineState(
    ready=True,
    live=True,
    draining=False,
    default_variant="alpha",
    variants=[
        channel.VariantState({"name": "alpha", "max_seq_len": 128}, VariantStatus.READY, None, {"name": "alpha"}, "f0"),
        channel.VariantState({"name": "beta"}, VariantStatus.FAILED, "no weights", {"execution": {"a": [1]}}, None),
    ],
)


def cross(message: Any) -> Any:
    return channel.SCHEMA.decode(channel.encode(message))


@pytest.mark.parametrize("message", REQUESTS, ids=lambda message: type(message).__name__)
def test_requests_cross_typed(message: channel.Request) -> None:
    crossed = channel.decode_request(channel.encode(message))
    assert crossed == message
    if isinstance(crossed, channel.SubmitMessage):
        assert type(crossed.request.priority) is Priority
        assert all(type(pair) is tuple for pair in crossed.request.pairs)
    if isinstance(crossed, channel.CallMessage):
        assert type(crossed.method) is channel.EngineCall


@pytest.mark.parametrize("message", REPLIES, ids=lambda message: type(message).__name__)
def test_replies_cross_typed(message: channel.Reply) -> None:
    crossed = channel.decode_reply(channel.encode(message))
    assert crossed == message
    if isinstance(crossed, channel.RepositoryReply):
        assert all(type(entry.state) is RepositoryState for entry in crossed.entries)


@pytest.mark.parametrize("rows", [1, 16])
def test_results_cross_bit_for_bit(rows: int) -> None:
    probabilities = np.random.default_rng(rows).dirichlet(np.ones(3), size=rows).astype(np.float32)
    result = EngineResult("alpha", probabilities, [index % 3 == 0 for index in range(rows)], Timings(1e-4, 2, 3, 4))
    crossed = channel.decode_reply(channel.encode(channel.ResultReply(5, result)))
    assert isinstance(crossed, channel.ResultReply)
    assert crossed.call_id == 5
    assert crossed.result.variant == "alpha"
    assert crossed.result.probabilities.dtype == np.float32
    np.testing.assert_array_equal(crossed.result.probabilities, probabilities)
    assert crossed.result.truncated == result.truncated
    assert crossed.result.timings == result.timings


# issue #26: the logits cross too, bit for bit, also as the engine hands them over (a strided view of its rows).
@pytest.mark.parametrize("rows", [1, 16])
def test_logits_cross_bit_for_bit(rows: int) -> None:
    outputs = np.random.default_rng(rows).normal(size=(rows, 6)).astype(np.float32)
    probabilities, logits = outputs[:, :3], outputs[:, 3:]
    result = EngineResult("alpha", probabilities, [False] * rows, Timings(1e-4, 2, 3, 4), logits)
    crossed = channel.decode_reply(channel.encode(channel.ResultReply(6, result)))
    assert isinstance(crossed, channel.ResultReply)
    assert crossed.result.logits is not None
    assert crossed.result.logits.dtype == np.float32
    np.testing.assert_array_equal(crossed.result.logits, logits)
    np.testing.assert_array_equal(crossed.result.probabilities, probabilities)


def test_engine_state_crosses() -> None:
    crossed = channel.decode_state(channel.encode(STATE))
    assert crossed == STATE
    assert type(crossed.variants[0].status) is VariantStatus


def test_a_message_of_the_wrong_direction_is_refused() -> None:
    with pytest.raises(ProtocolError, match="EngineState"):
        channel.decode_request(channel.encode(STATE))
    with pytest.raises(ProtocolError, match="CancelMessage"):
        channel.decode_reply(channel.encode(channel.CancelMessage(1)))


@pytest.mark.parametrize(
    "frame",
    [
        msgpack.packb(["0" * 12, 0, [1, [[["a", "b"]], "alpha", True, None, 0, None, 0.0, None, None]]]),
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"kind": "submit"}),
        b"\xc1",  # not msgpack at all
    ],
    ids=["another-version", "old-positional-list", "not-a-list", "garbage"],
)
def test_a_frame_of_another_protocol_version_is_refused(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        channel.decode_request(frame)


def test_a_frame_of_this_version_that_is_no_message_is_refused() -> None:
    for frame in (
        msgpack.packb([channel.SCHEMA.version, 99, []]),
        msgpack.packb([channel.SCHEMA.version, 0, [1]]),  # a SubmitMessage without its request
    ):
        with pytest.raises(ProtocolError):
            channel.decode_request(frame)


def test_the_version_follows_the_schema() -> None:
    """Any change to a message's fields (or an enum's members) changes the version: old and new code refuse each
    other's frames instead of misreading them."""
    from dataclasses import dataclass

    @dataclass(frozen=True, slots=True)
    class Before:
        call_id: int

    @dataclass(frozen=True, slots=True)
    class After:
        call_id: int
        extra: str | None = None

    After.__qualname__ = Before.__qualname__
    assert Schema([Before]).version == Schema([Before]).version
    assert Schema([Before]).version != Schema([After]).version
    assert channel.SCHEMA.version == Schema(channel.SCHEMA.messages).version


@pytest.mark.parametrize("error", ERRORS, ids=lambda error: type(error).__name__)
def test_engine_errors_cross_typed_and_answer_the_same(error: EngineError) -> None:
    crossed_reply = channel.decode_reply(channel.encode(channel.ErrorReply.of(3, error)))
    assert isinstance(crossed_reply, channel.ErrorReply)
    crossed = crossed_reply.rebuild()
    assert type(crossed) is type(error)
    assert str(crossed) == str(error)
    assert vars(crossed) == vars(error)
    assert crossed.reason == error.reason
    sent, received = from_engine(error), from_engine(crossed)
    assert (received.status, received.error_type, received.message, received.headers, received.details) == (
        sent.status,
        sent.error_type,
        sent.message,
        sent.headers,
        sent.details,
    )


def test_every_engine_error_type_is_registered() -> None:
    for error in ERRORS:
        assert error_type(type(error).__name__) is type(error)


def test_an_unknown_error_type_arrives_as_an_engine_error() -> None:
    crossed = channel.ErrorReply(1, "SomethingNew", "what happened", {"detail": 1}).rebuild()
    assert type(crossed) is EngineError
    assert str(crossed) == "what happened"
    assert crossed.reason == "error"


def test_a_field_without_a_wire_form_fails_when_the_schema_is_built() -> None:
    """A message field the codec cannot carry faithfully is caught at import, not on the first request."""
    from dataclasses import dataclass

    @dataclass(slots=True)
    class WithASet:
        names: set[str]

    @dataclass(slots=True)
    class WithATupleOfMessages:
        parts: tuple[channel.CancelMessage, channel.CancelMessage]

    for message in (WithASet, WithATupleOfMessages):
        with pytest.raises(TypeError):
            Schema([message])
