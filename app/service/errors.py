"""The one table of what a failed request is, for every transport: each engine and service exception maps to an
:class:`ErrorKind` (which fixes its metric outcome), a code that names it to clients, its message, how long to wait
before a retry, and structured details.

Transports map kinds to their own statuses and nothing else (HTTP: ``app.api.errors``); the engine keeps each error's
``reason``, its own metric label. Errors that belong to no engine call (a malformed query, a client that left, an Open
Inference Protocol request that does not parse) are defined here too, so that the table has one home.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from app.engine.errors import (
    DeadlineExceededError,
    DeadlineTooShortError,
    DrainingError,
    InferenceError,
    InputTooLongError,
    OverloadedError,
    RepositoryBusyError,
    RequestTooLargeError,
    UnknownVariantError,
    VariantLoadError,
    VariantNotReadyError,
)
from app.metrics import Outcome

NOT_READY_RETRY_AFTER_S = 5.0  # a variant still loading: its warm-up takes seconds
DRAINING_RETRY_AFTER_S = 1.0  # another replica (or the restarted process) answers soon
BUSY_RETRY_AFTER_S = 1.0  # a load or unload of the same variant is under way


class ErrorKind(StrEnum):
    """What went wrong, as a client must act on it; each transport answers a kind with one status of its own."""

    INVALID_ARGUMENT = "invalid_argument"  # the request cannot be read as its protocol's request
    INVALID_QUERY = "invalid_query"  # it reads, but the query breaks a rule of the prediction service
    NOT_FOUND = "not_found"  # no such variant (or model version)
    TOO_LARGE = "too_large"  # more pairs than one request may carry
    TOO_LONG = "too_long"  # a pair over max_seq_len that may (or can) not be truncated
    DEADLINE_TOO_SHORT = "deadline_too_short"  # shorter than its pairs take on an idle device
    LOAD_FAILED = "load_failed"  # a repository load the catalogue entry or its checkpoint breaks
    BUSY = "busy"  # the variant is being loaded or unloaded already
    OVERLOADED = "overloaded"  # refused at admission: retry later
    NOT_READY = "not_ready"  # the variant (or the engine process) is not serving yet
    DRAINING = "draining"  # the process is shutting down
    DEADLINE_EXCEEDED = "deadline_exceeded"  # the deadline passed before the pairs ran
    DISCONNECTED = "disconnected"  # the client left before its answer was ready
    INFERENCE_FAILED = "inference_failed"  # the forward pass of the request's batch failed
    INTERNAL = "internal"  # anything the table does not know: a fault of the server

    @property
    def outcome(self) -> Outcome:
        """The ``outcome`` label of xnli_requests_total for a request that ended with this kind."""
        return _OUTCOMES[self]


_OUTCOMES: dict[ErrorKind, Outcome] = {
    ErrorKind.INVALID_ARGUMENT: Outcome.CLIENT_ERROR,
    ErrorKind.INVALID_QUERY: Outcome.CLIENT_ERROR,
    ErrorKind.NOT_FOUND: Outcome.NOT_FOUND,
    ErrorKind.TOO_LARGE: Outcome.CLIENT_ERROR,
    ErrorKind.TOO_LONG: Outcome.CLIENT_ERROR,
    ErrorKind.DEADLINE_TOO_SHORT: Outcome.CLIENT_ERROR,
    ErrorKind.LOAD_FAILED: Outcome.CLIENT_ERROR,
    ErrorKind.BUSY: Outcome.CLIENT_ERROR,
    ErrorKind.OVERLOADED: Outcome.OVERLOADED,
    ErrorKind.NOT_READY: Outcome.UNAVAILABLE,
    ErrorKind.DRAINING: Outcome.UNAVAILABLE,
    ErrorKind.DEADLINE_EXCEEDED: Outcome.UNAVAILABLE,
    ErrorKind.DISCONNECTED: Outcome.DISCONNECTED,
    ErrorKind.INFERENCE_FAILED: Outcome.ERROR,
    ErrorKind.INTERNAL: Outcome.ERROR,
}


class InvalidQueryError(ValueError):
    """The query breaks a rule no transport-level schema caught (a client error)."""


class TooManyPairsError(ValueError):
    """More pairs in one request than ``max_pairs_per_request`` (a client error)."""

    def __init__(self, count: int, limit: int) -> None:
        self.count = count
        self.limit = limit
        super().__init__(f"{count} pairs in one request; the limit is max_pairs_per_request={limit}")


class ClientDisconnected(Exception):
    """The caller left before its answer was ready; its queued pairs were dropped."""


class InvalidInferenceRequest(ValueError):
    """An Open Inference Protocol request that does not read as one (tensors, parameters, outputs, framing)."""


class UnknownModelVersionError(LookupError):
    """An Open Inference Protocol request for a version of a model that does not exist."""


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed request as every transport sees it: what kind, what to tell the client, when to retry."""

    kind: ErrorKind
    code: str  # names the error to clients (the native API's ``type``)
    message: str
    retry_after_s: float | None = None
    details: list[dict[str, Any]] | None = None

    @property
    def outcome(self) -> Outcome:
        return self.kind.outcome


def _failure(
    kind: ErrorKind,
    code: str,
    retry_after_s: Callable[[Any], float] | None = None,
    details: Callable[[Any], list[dict[str, Any]]] | None = None,
) -> Callable[[BaseException], Failure]:
    def describe(error: BaseException) -> Failure:
        return Failure(
            kind,
            code,
            str(error),
            None if retry_after_s is None else retry_after_s(error),
            None if details is None else details(error),
        )

    return describe


def _constant(seconds: float) -> Callable[[Any], float]:
    return lambda _: seconds


def _variant_load(error: VariantLoadError) -> Failure:
    kind = ErrorKind.INTERNAL if error.server_fault else ErrorKind.LOAD_FAILED
    return Failure(kind, "load_failed", str(error))


_TABLE: dict[type[BaseException], Callable[[Any], Failure]] = {
    UnknownVariantError: _failure(ErrorKind.NOT_FOUND, "unknown_variant"),
    UnknownModelVersionError: _failure(ErrorKind.NOT_FOUND, "unknown_version"),
    TooManyPairsError: _failure(ErrorKind.TOO_LARGE, "too_many_pairs"),
    RequestTooLargeError: _failure(
        ErrorKind.TOO_LARGE, "too_many_pairs", details=lambda error: [{"limit": error.limit}]
    ),
    InvalidQueryError: _failure(ErrorKind.INVALID_QUERY, "invalid_request"),
    InvalidInferenceRequest: _failure(ErrorKind.INVALID_ARGUMENT, "invalid_inference_request"),
    InputTooLongError: _failure(
        ErrorKind.TOO_LONG,
        "input_too_long",
        details=lambda error: [{"pair": error.pair_index, "tokens": error.length, "limit": error.limit}],
    ),
    DeadlineTooShortError: _failure(
        ErrorKind.DEADLINE_TOO_SHORT,
        "deadline_too_short",
        details=lambda error: [{"minimum_ms": round(error.minimum_s * 1000, 3)}],
    ),
    VariantNotReadyError: _failure(ErrorKind.NOT_READY, "not_ready", _constant(NOT_READY_RETRY_AFTER_S)),
    OverloadedError: _failure(ErrorKind.OVERLOADED, "overloaded", lambda error: error.retry_after_s),
    DeadlineExceededError: _failure(ErrorKind.DEADLINE_EXCEEDED, "deadline_exceeded"),
    DrainingError: _failure(ErrorKind.DRAINING, "draining", _constant(DRAINING_RETRY_AFTER_S)),
    InferenceError: _failure(ErrorKind.INFERENCE_FAILED, "inference_error"),
    VariantLoadError: _variant_load,
    RepositoryBusyError: _failure(ErrorKind.BUSY, "busy", _constant(BUSY_RETRY_AFTER_S)),
    ClientDisconnected: _failure(ErrorKind.DISCONNECTED, "disconnected"),
}
KNOWN_ERRORS: tuple[type[BaseException], ...] = tuple(_TABLE)


def failure_of(error: BaseException) -> Failure:
    """What ``error`` means to a client; anything the table does not name is an internal error of the server."""
    for cls in type(error).__mro__:  # the most specific entry wins, as an exception's own class comes first
        describe = _TABLE.get(cls)
        if describe is not None:
            return describe(error)
    return Failure(ErrorKind.INTERNAL, "internal_error", f"{type(error).__name__}: {error}")


def outcome_of(error: BaseException) -> Outcome:
    """The ``outcome`` label of xnli_requests_total for a request that raised ``error``."""
    return failure_of(error).outcome
