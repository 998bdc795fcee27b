"""HTTP's one table: each kind of failure has a status, and every engine and service error is answered as it always
was (status, type, headers, details)."""

from __future__ import annotations

from typing import Any

import pytest

from app.api.accounting import CLIENT_CLOSED, outcome_for
from app.api.errors import HTTP_STATUS, from_engine
from app.engine.errors import EngineError, VariantLoadError
from app.metrics import Outcome
from app.service.errors import (
    ClientDisconnected,
    ErrorKind,
    InvalidInferenceRequest,
    InvalidQueryError,
    TooManyPairsError,
    UnknownModelVersionError,
)
from tests.support.helpers import ENGINE_ERRORS, REPOSITORY_ERRORS


def test_every_kind_has_an_http_status() -> None:
    assert set(HTTP_STATUS) == set(ErrorKind)


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_a_refusal_counted_from_its_status_counts_as_its_kind(kind: ErrorKind) -> None:
    assert outcome_for(HTTP_STATUS[kind]) is kind.outcome


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, Outcome.SUCCESS), (401, Outcome.CLIENT_ERROR), (405, Outcome.CLIENT_ERROR), (502, Outcome.ERROR)],
)
def test_statuses_no_kind_has_still_count(status: int, outcome: Outcome) -> None:
    assert outcome_for(status) is outcome


# What from_engine answered before the table existed, error by error: (status, type, headers, details).
Answer = tuple[int, str, dict[str, str], list[dict[str, Any]] | None]
EXPECTED: dict[str, Answer] = {
    "UnknownVariantError": (404, "unknown_variant", {}, None),
    "VariantNotReadyError": (503, "not_ready", {"Retry-After": "5"}, None),
    "InputTooLongError": (422, "input_too_long", {}, [{"pair": 3, "tokens": 700, "limit": 512}]),
    "OverloadedError": (429, "overloaded", {"Retry-After": "3"}, None),
    "RequestTooLargeError": (413, "too_many_pairs", {}, [{"limit": 64}]),
    "DeadlineTooShortError": (422, "deadline_too_short", {}, [{"minimum_ms": 12.3}]),
    "DeadlineExceededError": (503, "deadline_exceeded", {}, None),
    "DrainingError": (503, "draining", {"Connection": "close", "Retry-After": "1"}, None),
    "InferenceError": (500, "inference_error", {}, None),
    "VariantLoadError": (500, "load_failed", {}, None),  # server_fault=True in REPOSITORY_ERRORS
    "RepositoryBusyError": (409, "busy", {"Retry-After": "1"}, None),
    "InvalidQueryError": (422, "invalid_request", {}, None),
    "TooManyPairsError": (413, "too_many_pairs", {}, None),
    "InvalidInferenceRequest": (400, "invalid_inference_request", {}, None),
    "UnknownModelVersionError": (404, "unknown_version", {}, None),
    "ClientDisconnected": (CLIENT_CLOSED, "disconnected", {}, None),
    "EngineError": (500, "internal_error", {}, None),
}
ERRORS: list[Exception] = [
    *ENGINE_ERRORS,
    *REPOSITORY_ERRORS,
    InvalidQueryError("no pairs"),
    TooManyPairsError(9, 8),
    InvalidInferenceRequest("input 'premise' given twice"),
    UnknownModelVersionError("model 'alpha' has no version '7'; versions: 1"),
    ClientDisconnected("gone"),
    EngineError("anything else"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda error: type(error).__name__)
def test_each_error_is_answered_as_before(error: Exception) -> None:
    answer = from_engine(error)
    assert (answer.status, answer.error_type, answer.headers, answer.details) == EXPECTED[type(error).__name__]
    expected_message = f"EngineError: {error}" if type(error) is EngineError else str(error)
    assert answer.message == expected_message


def test_a_load_the_catalogue_entry_breaks_is_400() -> None:
    answer = from_engine(VariantLoadError("alpha", "labels do not map"))
    assert (answer.status, answer.error_type, answer.headers) == (400, "load_failed", {})
