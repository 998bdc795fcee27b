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
from app.api.errors import CLIENT_CLOSED, HTTP_STATUS
from app.metrics import Outcome

__all__ = ["CLIENT_CLOSED", "begin", "count_refusal", "counted_by_service", "note_variant", "outcome_for"]

_COUNTED = "xnli_counted"
_VARIANT = "xnli_variant"


def _outcomes_by_status() -> dict[int, Outcome]:
    """Each status HTTP answers a kind of failure with, and that kind's outcome: the service's table decides, so a
    refusal counted here from its status and one the service counted from its error agree."""
    outcomes: dict[int, Outcome] = {}
    for kind, status in HTTP_STATUS.items():
        if outcomes.setdefault(status, kind.outcome) != kind.outcome:
            raise ValueError(f"HTTP {status} answers kinds of different outcomes ({outcomes[status]}, {kind.outcome})")
    return outcomes


_OUTCOME_BY_STATUS = _outcomes_by_status()


def outcome_for(status: int) -> Outcome:
    """The `outcome` label of xnli_requests_total for an HTTP status (also those no kind has: 401, 405, 502)."""
    if status < 400:
        return Outcome.SUCCESS
    return _OUTCOME_BY_STATUS.get(status, Outcome.CLIENT_ERROR if status < 500 else Outcome.ERROR)


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
