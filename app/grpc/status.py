"""What gRPC answers each kind of failure with: the one table of status codes, derived from the service's kinds
(``app.service.errors``), like HTTP's ``app.api.errors.HTTP_STATUS``. The kinds themselves, their codes, messages
and retry hints are the service's; this module adds the status and the trailing metadata that carry them.

Trailing metadata of every failure:

* ``xnli-error-type``: the error's code, as the native API's ``type`` (``overloaded``, ``too_many_pairs``...);
* ``retry-after``: whole seconds to wait (rounded up, as HTTP's ``Retry-After``), when a retry can help;
* ``grpc-retry-pushback-ms``: the same in milliseconds, the key gRPC's own retry policy honours (gRFC A6);
* ``xnli-error-details``: the failure's structured details as JSON, when it has any (limits, the pair at fault).
"""

from __future__ import annotations

import math

import grpc
import orjson

from app.service.errors import ErrorKind, Failure

GRPC_STATUS: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.INVALID_QUERY: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    # Too many pairs: the same request never fits, so not RESOURCE_EXHAUSTED (which invites a retry).
    ErrorKind.TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.TOO_LONG: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.DEADLINE_TOO_SHORT: grpc.StatusCode.INVALID_ARGUMENT,
    # The catalogue entry or checkpoint must be fixed before a load can succeed.
    ErrorKind.LOAD_FAILED: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.BUSY: grpc.StatusCode.ABORTED,  # a concurrent load or unload of the same model: retry shortly
    ErrorKind.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.NOT_READY: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.DRAINING: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.DISCONNECTED: grpc.StatusCode.CANCELLED,  # nobody reads it: the client cancelled
    ErrorKind.INFERENCE_FAILED: grpc.StatusCode.INTERNAL,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}

ERROR_TYPE_KEY = "xnli-error-type"
RETRY_AFTER_KEY = "retry-after"
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
DETAILS_KEY = "xnli-error-details"

Metadata = tuple[tuple[str, str], ...]


def status_of(failure: Failure) -> grpc.StatusCode:
    return GRPC_STATUS[failure.kind]


def trailing_metadata(failure: Failure) -> Metadata:
    """The failure's code, retry hint and details as trailing metadata (see the module's docstring)."""
    entries = [(ERROR_TYPE_KEY, failure.code)]
    if failure.retry_after_s is not None:
        entries.append((RETRY_AFTER_KEY, str(math.ceil(failure.retry_after_s))))
        entries.append((RETRY_PUSHBACK_KEY, str(max(0, math.ceil(failure.retry_after_s * 1000)))))
    if failure.details:
        entries.append((DETAILS_KEY, orjson.dumps(failure.details).decode("utf-8")))
    return tuple(entries)
