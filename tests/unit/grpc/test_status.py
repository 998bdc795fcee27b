"""The one table of gRPC status codes: every kind of failure has one, and the trailing metadata carries the code,
the retry hint (both the whole seconds HTTP sends and gRPC's own pushback) and the details."""

from __future__ import annotations

import grpc
import orjson
import pytest

from app.engine.errors import OverloadedError, RequestTooLargeError
from app.grpc.status import GRPC_STATUS, status_of, trailing_metadata
from app.service.errors import ErrorKind, failure_of
from tests.support.helpers import ENGINE_ERRORS, REPOSITORY_ERRORS


def test_every_kind_has_a_status() -> None:
    assert set(GRPC_STATUS) == set(ErrorKind)


def test_no_failure_leaves_as_unknown() -> None:
    assert grpc.StatusCode.UNKNOWN not in GRPC_STATUS.values()


@pytest.mark.parametrize("error", ENGINE_ERRORS + REPOSITORY_ERRORS, ids=lambda error: type(error).__name__)
def test_engine_errors_map_through_the_service_table(error: Exception) -> None:
    failure = failure_of(error)
    assert status_of(failure) is GRPC_STATUS[failure.kind]
    assert dict(trailing_metadata(failure))["xnli-error-type"] == failure.code


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (ErrorKind.NOT_FOUND, grpc.StatusCode.NOT_FOUND),
        (ErrorKind.INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT),
        (ErrorKind.OVERLOADED, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (ErrorKind.DRAINING, grpc.StatusCode.UNAVAILABLE),
        (ErrorKind.NOT_READY, grpc.StatusCode.UNAVAILABLE),
        (ErrorKind.DEADLINE_EXCEEDED, grpc.StatusCode.DEADLINE_EXCEEDED),
        (ErrorKind.LOAD_FAILED, grpc.StatusCode.FAILED_PRECONDITION),
        (ErrorKind.INTERNAL, grpc.StatusCode.INTERNAL),
    ],
)
def test_the_codes_clients_act_on(kind: ErrorKind, expected: grpc.StatusCode) -> None:
    assert GRPC_STATUS[kind] is expected


def test_overloaded_carries_retry_information() -> None:
    metadata = dict(trailing_metadata(failure_of(OverloadedError("the queue is full", retry_after_s=2.4))))
    assert metadata == {"xnli-error-type": "overloaded", "retry-after": "3", "grpc-retry-pushback-ms": "2400"}


def test_details_are_json() -> None:
    metadata = dict(trailing_metadata(failure_of(RequestTooLargeError("too many", limit=64))))
    assert orjson.loads(metadata["xnli-error-details"]) == [{"limit": 64}]
    assert "retry-after" not in metadata
