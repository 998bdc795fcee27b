"""The one place where answers the prediction service did not give are counted in xnli_requests_total.

The service counts every prediction it handles (success or not). Everything refused before it, by the HTTP layer,
is counted here from the final status: a body the schema refuses (422, or the protocol's 400), an unknown OIP model
or version (404), a missing API key (401), a body over the limit (413), a client that left while its body was being
read (499), an unhandled error (500). Readiness and liveness 503s are probe answers, not refusals, and stay uncounted.
"""

from __future__ import annotations

from typing import Any

from starlette.types import Scope

from app import metrics
from app.metrics import Outcome

CLIENT_CLOSED = 499  # nginx's code for "the client went away first"; logged, never seen by a client
_COUNTED = "xnli_counted"
_VARIANT = "xnli_variant"


def outcome_for(status: int) -> Outcome:
    """The `outcome` label of xnli_requests_total for an HTTP status."""
    if status < 400:
        return Outcome.SUCCESS
    if status == 404:
        return Outcome.NOT_FOUND
    if status == 429:
        return Outcome.OVERLOADED
    if status == 503:
        return Outcome.UNAVAILABLE
    if status == CLIENT_CLOSED:
        return Outcome.DISCONNECTED
    if status < 500:
        return Outcome.CLIENT_ERROR
    return Outcome.ERROR


def _state(scope: Scope) -> dict[str, Any]:
    state: dict[str, Any] = scope.setdefault("state", {})
    return state


def begin(scope: Scope) -> None:
    """Give the request the state every layer below shares (Starlette's ``request.state`` is this dict)."""
    _state(scope)


def counted_by_service(scope: Scope) -> None:
    """The prediction service has counted (or will count) this request: the status is not counted again."""
    _state(scope)[_COUNTED] = True


def note_variant(scope: Scope, variant: str) -> None:
    """The served variant a request was for, once known, labels a refusal counted here."""
    _state(scope)[_VARIANT] = variant


def count_refusal(scope: Scope, status: int) -> None:
    """Count an answer the service did not count: every 4xx, and a 500 nobody handled."""
    state = _state(scope)
    if state.get(_COUNTED) or not (400 <= status < 500 or status == 500):
        return
    metrics.REQUESTS.labels(state.get(_VARIANT, metrics.UNKNOWN_VARIANT), outcome_for(status)).inc()
