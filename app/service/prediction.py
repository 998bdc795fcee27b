"""One prediction path for every protocol: validate a typed query, route it to a variant, run it on the engine,
count it once in the request metrics, and return the engine's typed result.

Transports only parse their wire format into a :class:`PredictionQuery` and render the engine's :class:`EngineResult`.
A transport that can tell when its caller has gone passes ``disconnected`` (an awaitable that completes then): the
prediction is cancelled, its queued pairs are skipped, and :class:`ClientDisconnected` is raised.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from app import metrics, tracing
from app.engine.contract import EngineRequest, EngineResult, Priority
from app.engine.errors import EngineError
from app.logs import request_id_var
from app.metrics import Outcome
from app.service.engine_handle import EngineHandle

# The service's errors and their outcome live in the one table of failures (app.service.errors); re-exported here,
# where callers of the prediction path look for them.
from app.service.errors import ClientDisconnected as ClientDisconnected
from app.service.errors import InvalidQueryError as InvalidQueryError
from app.service.errors import TooManyPairsError as TooManyPairsError
from app.service.errors import outcome_of as outcome_of
from app.tracing.spans import request_span

ClientPriority = Literal["interactive", "batch"]
"""The priority classes a client may ask for (the engine keeps ``shadow`` for itself)."""
CLIENT_PRIORITIES: tuple[str, ...] = get_args(ClientPriority)
DEFAULT_PRIORITY: ClientPriority = "interactive"
LANGUAGE_MIN_CHARS = 1
LANGUAGE_MAX_CHARS = 35
MAX_TIMEOUT_MS = 3_600_000  # a request may shorten the server's timeout, and never asks for more than an hour
MAX_TIMEOUT_S = MAX_TIMEOUT_MS / 1000


def is_language_code(value: object) -> bool:
    """A request's ``language``: an ISO 639-1 code (``fr``), possibly with a region (``fr-CA``)."""
    return isinstance(value, str) and LANGUAGE_MIN_CHARS <= len(value) <= LANGUAGE_MAX_CHARS


@dataclass(frozen=True, slots=True)
class PredictionQuery:
    """What every protocol asks of a prediction, once parsed from its wire format."""

    pairs: Sequence[tuple[str, str]]
    variant: str | None = None  # named by the client; None lets the catalogue's split (or default) choose
    routing_key: str | None = None  # keeps a client on one variant of the split
    truncate: bool = True
    timeout_s: float | None = None
    priority: str = DEFAULT_PRIORITY
    language: str | None = None

    def validate(self, max_pairs: int) -> None:
        if not self.pairs:
            raise InvalidQueryError("no pairs to predict")
        if len(self.pairs) > max_pairs:
            raise TooManyPairsError(len(self.pairs), max_pairs)
        if self.priority not in CLIENT_PRIORITIES:
            raise InvalidQueryError(f"priority must be one of {', '.join(CLIENT_PRIORITIES)}")
        if self.language is not None and not is_language_code(self.language):
            raise InvalidQueryError(
                f"language must be a code of {LANGUAGE_MIN_CHARS} to {LANGUAGE_MAX_CHARS} characters (e.g. fr)"
            )
        if self.timeout_s is not None and not 0 < self.timeout_s <= MAX_TIMEOUT_S:
            raise InvalidQueryError(f"timeout must be in (0, {MAX_TIMEOUT_S:g}] seconds")


Disconnected = Callable[[], Awaitable[object]]


class PredictionService:
    """The engine as every transport sees it: one call per request, counted once."""

    def __init__(self, engine: EngineHandle, max_pairs_per_request: int, max_expanded_chars: int | None = None) -> None:
        self.engine = engine
        self.max_pairs_per_request = max_pairs_per_request
        self.max_expanded_chars = max_expanded_chars
        """The most characters of text a request may expand to (zero-shot pairs each text with every label): the
        body limit, so that no request costs more tokenization than the largest body /predict accepts."""

    async def predict(
        self, query: PredictionQuery, endpoint: str, disconnected: Disconnected | None = None
    ) -> EngineResult:
        """Route, validate and predict; ``endpoint`` labels xnli_request_duration_seconds.

        Raises UnknownVariantError first (routing comes before every other check), then InvalidQueryError or
        TooManyPairsError, an EngineError from the engine, or ClientDisconnected. Every call, whatever its end,
        adds one to xnli_requests_total and one observation to xnli_request_duration_seconds.
        """
        if tracing.STATE.active:  # tracing (issue #27): the same, on the request's span
            return await self._predict_traced(query, endpoint, disconnected)
        started = time.perf_counter()
        variant = metrics.UNKNOWN_VARIANT
        outcome = Outcome.ERROR  # also what a cancellation by the server (not the client) counts as
        try:
            variant = self.engine.route(query.variant, query.routing_key).spec.name
            query.validate(self.max_pairs_per_request)
            result = await self._run(query, variant, disconnected)
            outcome = Outcome.SUCCESS
            return result
        except (EngineError, InvalidQueryError, TooManyPairsError, ClientDisconnected) as error:
            outcome = outcome_of(error)
            raise
        finally:
            metrics.REQUEST_DURATION.labels(variant, endpoint).observe(time.perf_counter() - started)
            metrics.REQUESTS.labels(variant, outcome).inc()

    async def _predict_traced(
        self, query: PredictionQuery, endpoint: str, disconnected: Disconnected | None
    ) -> EngineResult:
        """``predict`` with its request span (the transport's server span, else one of its own) labelled with the
        variant, priority, pairs and outcome, and its trace id as the duration's exemplar when sampled."""
        with request_span(f"predict {endpoint}") as span:
            started = time.perf_counter()
            variant = metrics.UNKNOWN_VARIANT
            outcome = Outcome.ERROR
            span.set_attributes(
                {"xnli.endpoint": endpoint, "xnli.pairs": len(query.pairs), "xnli.priority": query.priority}
            )
            try:
                variant = self.engine.route(query.variant, query.routing_key).spec.name
                span.set_attribute("xnli.variant", variant)
                query.validate(self.max_pairs_per_request)
                result = await self._run(query, variant, disconnected)
                outcome = Outcome.SUCCESS
                return result
            except (EngineError, InvalidQueryError, TooManyPairsError, ClientDisconnected) as error:
                outcome = outcome_of(error)
                raise
            finally:
                span.set_attribute("xnli.outcome", str(outcome))
                duration = time.perf_counter() - started
                metrics.REQUEST_DURATION.labels(variant, endpoint).observe(duration, tracing.exemplar(span))
                metrics.REQUESTS.labels(variant, outcome).inc()

    async def _run(self, query: PredictionQuery, variant: str, disconnected: Disconnected | None) -> EngineResult:
        request = EngineRequest(
            query.pairs,
            variant,  # routed: the engine does not choose again
            query.truncate,
            query.timeout_s,
            Priority[query.priority.upper()],
            query.language,
            request_id=request_id_var.get(),
        )
        call = self.engine.submit(request)
        if disconnected is None:
            return await call
        # The prediction runs in the caller's own task and only the watcher is a new one: one task per request,
        # not two plus an asyncio.wait, which matters when the transport, not the model, is the bottleneck.
        task = asyncio.current_task()
        assert task is not None
        gone: list[bool] = []

        async def watch() -> None:
            await disconnected()
            gone.append(True)
            task.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            return await call
        except asyncio.CancelledError:
            if not gone:
                raise  # the server is cancelling us, not the client
            task.uncancel()
            raise ClientDisconnected("the client left before its answer was ready") from None
        finally:
            watcher.cancel()
