"""The one table of failures: every engine and service error has a kind (which fixes its metric outcome), a code, its
message, and the retry hint and details a client needs, whatever transport answers it."""

from __future__ import annotations

import pytest

from app.engine import errors as engine_errors
from app.engine.errors import EngineError, OverloadedError, VariantLoadError
from app.metrics import Outcome
from app.service import errors as service_errors
from app.service.errors import (
    KNOWN_ERRORS,
    ClientDisconnected,
    ErrorKind,
    InvalidInferenceRequest,
    InvalidQueryError,
    TooManyPairsError,
    UnknownModelVersionError,
    failure_of,
    outcome_of,
)
from tests.support.helpers import ENGINE_ERRORS, REPOSITORY_ERRORS

SERVICE_ERRORS: list[Exception] = [
    InvalidQueryError("no pairs to predict"),
    TooManyPairsError(9, 8),
    ClientDisconnected("the client left"),
    InvalidInferenceRequest("input 'premise' has datatype FP32; expected BYTES"),
    UnknownModelVersionError("model 'alpha' has no version '7'; versions: 1"),
]
ERRORS: list[Exception] = [*ENGINE_ERRORS, *REPOSITORY_ERRORS, *SERVICE_ERRORS]


def subclasses(base: type[BaseException]) -> set[type[BaseException]]:
    found: set[type[BaseException]] = set()
    pending = [base]
    while pending:
        for sub in pending.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                pending.append(sub)
    return found


def test_every_engine_error_class_is_in_the_table() -> None:
    declared = {cls for cls in subclasses(EngineError) if cls.__module__ == engine_errors.__name__}
    assert declared, "no engine errors found"
    assert declared - set(KNOWN_ERRORS) == set()


def test_every_service_error_class_is_in_the_table() -> None:
    declared = {
        value
        for value in vars(service_errors).values()
        if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == service_errors.__name__
    }
    assert declared - set(KNOWN_ERRORS) == set()


@pytest.mark.parametrize("error", ERRORS, ids=lambda error: type(error).__name__)
def test_each_error_is_described_with_its_own_message(error: Exception) -> None:
    failure = failure_of(error)
    assert failure.message == str(error)
    assert failure.code
    assert failure.outcome is failure.kind.outcome is outcome_of(error)
    server_fault = isinstance(error, VariantLoadError) and error.server_fault
    assert (failure.kind is ErrorKind.INTERNAL) == server_fault


def test_every_kind_has_an_outcome() -> None:
    assert {kind.outcome for kind in ErrorKind} <= set(Outcome) - {Outcome.SUCCESS}


def test_an_error_nobody_named_is_internal() -> None:
    failure = failure_of(EngineError("anything else"))
    assert (failure.kind, failure.code, failure.message) == (
        ErrorKind.INTERNAL,
        "internal_error",
        "EngineError: anything else",
    )
    assert outcome_of(RuntimeError("boom")) is Outcome.ERROR


def test_a_load_the_entry_breaks_is_the_clients_and_one_that_breaks_unexplained_is_the_servers() -> None:
    assert failure_of(VariantLoadError("alpha", "bad labels")).kind is ErrorKind.LOAD_FAILED
    assert failure_of(VariantLoadError("alpha", "boom", server_fault=True)).kind is ErrorKind.INTERNAL


def test_retry_hints_and_details_are_facts_not_headers() -> None:
    overloaded = failure_of(OverloadedError("the queue is full", retry_after_s=2.4))
    assert (overloaded.kind, overloaded.retry_after_s, overloaded.details) == (ErrorKind.OVERLOADED, 2.4, None)
    by_type = {type(error): failure_of(error) for error in ENGINE_ERRORS}
    assert by_type[engine_errors.InputTooLongError].details == [{"pair": 3, "tokens": 700, "limit": 512}]
    assert by_type[engine_errors.RequestTooLargeError].details == [{"limit": 64}]
    assert by_type[engine_errors.DeadlineTooShortError].details == [{"minimum_ms": 12.3}]
    assert by_type[engine_errors.VariantNotReadyError].retry_after_s == 5.0
    assert by_type[engine_errors.DrainingError].retry_after_s == 1.0


def test_a_disconnected_client_is_its_own_outcome() -> None:
    assert outcome_of(ClientDisconnected()) is Outcome.DISCONNECTED
