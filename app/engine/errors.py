"""Errors the engine raises to its callers; the API maps each to a status code, other callers handle them as such."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class EngineError(Exception):
    """Base of the errors a caller is expected to translate.

    Every subclass registers itself by class name, so another process (a front end) rebuilds an error it receives
    with its type and attributes (:func:`rebuild_error`) and the API answers it as in one process.
    """

    reason = "error"  # the `reason` label of xnli_request_failures_total

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _ERROR_TYPES[cls.__name__] = cls


_ERROR_TYPES: dict[str, type[EngineError]] = {EngineError.__name__: EngineError}


def error_type(name: str) -> type[EngineError]:
    """The registered EngineError subclass called ``name``; EngineError itself for a name this code does not know."""
    return _ERROR_TYPES.get(name, EngineError)


def error_parts(error: EngineError) -> tuple[str, str, dict[str, Any]]:
    """What rebuilds ``error`` elsewhere: its type's name, its message and the attributes callers read
    (retry_after_s, limit, pair_index, ...)."""
    message = error.args[0] if error.args else str(error)
    return type(error).__name__, str(message), dict(vars(error))


def rebuild_error(name: str, message: str, attributes: dict[str, Any]) -> EngineError:
    """The error :func:`error_parts` described, of the same type with the same attributes (without calling its
    ``__init__``, whose arguments differ by type)."""
    kind = error_type(name)
    error = kind.__new__(kind)
    Exception.__init__(error, message)
    vars(error).update(attributes)
    return error


class UnknownVariantError(EngineError, KeyError):
    reason = "unknown_variant"

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = list(known)
        super().__init__(f"unknown variant {name!r}; served variants: {', '.join(known)}")

    def __str__(self) -> str:
        return str(self.args[0])


class VariantNotReadyError(EngineError):
    reason = "not_ready"

    def __init__(self, name: str, status: str) -> None:
        self.name = name
        self.status = status
        super().__init__(f"variant {name!r} is not ready (status: {status})")


class InputTooLongError(EngineError, ValueError):
    """A pair does not fit ``max_seq_len`` (and may not, or cannot, be truncated)."""

    reason = "too_long"

    def __init__(self, pair_index: int, length: int | None, limit: int, message: str) -> None:
        self.pair_index = pair_index
        self.length = length
        self.limit = limit
        super().__init__(message)


class OverloadedError(EngineError):
    """Refused at admission: the queue is full, or its backlog could not be served before the request's deadline."""

    reason = "overloaded"

    def __init__(self, message: str, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class RequestTooLargeError(EngineError):
    """More pairs in one request than the variant's queue may ever hold: no amount of waiting would admit it."""

    reason = "too_large"

    def __init__(self, message: str, limit: int) -> None:
        self.limit = limit
        super().__init__(message)


class DeadlineTooShortError(EngineError):
    """The request's own deadline is shorter than its pairs take even on an idle device: a client error, not load."""

    reason = "deadline_too_short"

    def __init__(self, message: str, minimum_s: float) -> None:
        self.minimum_s = minimum_s
        super().__init__(message)


class DeadlineExceededError(EngineError):
    """The request's deadline passed before its pairs were computed; they were dropped, not run."""

    reason = "deadline"


class DrainingError(EngineError):
    """The process is shutting down and takes no new work."""

    reason = "draining"


class InferenceError(EngineError, RuntimeError):
    """The forward pass of a batch carrying this request failed; other batches are unaffected."""

    reason = "inference"


class VariantLoadError(EngineError):
    """A repository load failed (catalogue entry, checkpoint, labels, accuracy guard); what served before still does.

    ``server_fault`` is True when the load broke for a reason the catalogue entry does not explain (an unexpected
    exception while loading), False when the entry or its checkpoint is at fault.
    """

    reason = "load_failed"

    def __init__(self, name: str, message: str, server_fault: bool = False) -> None:
        self.name = name
        self.server_fault = server_fault
        super().__init__(message)


class RepositoryBusyError(EngineError):
    """The variant is already being loaded or unloaded, or start-up is still loading the catalogue."""

    reason = "busy"
