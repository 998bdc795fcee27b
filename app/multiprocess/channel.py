"""The wire between front ends and the engine process: addresses and the typed messages that cross it.

Front DEALER -> engine ROUTER, one frame each:

* :class:`SubmitMessage`: an :class:`~app.engine.contract.EngineRequest` for ``Engine.submit``, the same contract as
  in one process (pairs, or the front end's token ids with its encoder's fingerprint; the time already spent);
* :class:`CancelMessage`: the client of ``call_id`` hung up: the engine cancels that prediction (its queued pairs are
  dropped);
* :class:`CallMessage`: one of the engine methods in :class:`EngineCall` (repository, metrics scrape).

Engine -> front, one frame: :class:`ResultReply`, :class:`RepositoryReply`, :class:`MetricsReply` or
:class:`DoneReply` for what was asked; :class:`ErrorReply` for an :class:`app.engine.errors.EngineError` (rebuilt on
the front with its type and attributes, so the API answers the same status and JSON body as in one process);
:class:`FailedReply` for anything else (the API's 500).

Engine PUB -> front SUB, every :data:`STATE_INTERVAL_S`: :class:`EngineState`; a front that hears nothing for
``XNLI_SERVE_ENGINE_SILENCE_S`` (default :data:`STALE_AFTER_S`) treats the engine process as gone.

Every frame carries the schema's version (:mod:`app.multiprocess.wire`); a frame of another version is refused.
Messages are plain (not frozen) dataclasses, cheaper to build on the hot path (see :mod:`app.engine.contract`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

from app.engine.contract import EngineRequest, EngineResult
from app.engine.errors import EngineError, error_parts, rebuild_error
from app.engine.status import RepositoryEntry, VariantStatus
from app.multiprocess.wire import ProtocolError, Schema

__all__ = ["ProtocolError"]

STATE_INTERVAL_S = 0.05
STALE_AFTER_S = 2.0  # the default of XNLI_SERVE_ENGINE_SILENCE_S (app.settings says why not lower)


def request_address(run_dir: Path) -> str:
    return f"ipc://{run_dir / 'engine.sock'}"


def state_address(run_dir: Path) -> str:
    return f"ipc://{run_dir / 'state.sock'}"


# -- front -> engine -------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class SubmitMessage:
    call_id: int
    request: EngineRequest


@dataclass(slots=True)
class CancelMessage:
    call_id: int


class EngineCall(StrEnum):
    """The engine methods a front may call (the API's repository routes and the /metrics scrape)."""

    REPOSITORY_INDEX = "repository_index"
    REPOSITORY_ENTRY = "repository_entry"
    LOAD_VARIANT = "load_variant"
    UNLOAD_VARIANT = "unload_variant"
    METRICS = "metrics"


@dataclass(slots=True)
class CallMessage:
    call_id: int
    method: EngineCall
    name: str | None = None  # the variant, for every method but the index and the metrics
    min_queue_pairs: int = 1  # load_variant's


# -- engine -> front -------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ResultReply:
    call_id: int
    result: EngineResult


@dataclass(slots=True)
class RepositoryReply:
    """The index, or the one entry asked for."""

    call_id: int
    entries: list[RepositoryEntry]


@dataclass(slots=True)
class MetricsReply:
    call_id: int
    exposition: bytes  # the engine process's Prometheus text exposition


@dataclass(slots=True)
class DoneReply:
    """A load or unload finished."""

    call_id: int


@dataclass(slots=True)
class ErrorReply:
    """An EngineError: its type's name, message and attributes (``app.engine.errors.error_parts``)."""

    call_id: int
    error_type: str
    message: str
    attributes: dict[str, Any]

    @classmethod
    def of(cls, call_id: int, error: EngineError) -> ErrorReply:
        return cls(call_id, *error_parts(error))

    def rebuild(self) -> EngineError:
        """The error as the engine raised it (EngineError itself for a type this process does not know)."""
        return rebuild_error(self.error_type, self.message, self.attributes)


@dataclass(slots=True)
class FailedReply:
    call_id: int
    message: str


Reply = ResultReply | RepositoryReply | MetricsReply | DoneReply | ErrorReply | FailedReply


# -- engine state broadcast ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class VariantState:
    """One variant as the engine serves it: what the front ends route, tokenize and describe with."""

    spec: dict[str, Any]  # its VariantSpec as JSON (``model_dump(mode="json")``)
    status: VariantStatus
    error: str | None
    description: dict[str, Any]  # ``VariantRuntime.describe()``: what /variants shows
    fingerprint: str | None  # of the encoder it serves with (None before it is loaded): front ends load the same one


@dataclass(slots=True)
class EngineState:
    """What the engine process publishes: the front ends answer health, /variants and routing from it."""

    ready: bool
    live: bool
    draining: bool
    default_variant: str
    variants: list[VariantState]
    sent_at: float = field(default_factory=time.time)


SCHEMA = Schema(
    [
        SubmitMessage,
        CancelMessage,
        CallMessage,
        ResultReply,
        RepositoryReply,
        MetricsReply,
        DoneReply,
        ErrorReply,
        FailedReply,
        EngineState,
    ]
)


def encode(message: Any) -> bytes:
    """One frame for a message of this channel."""
    return SCHEMA.encode(message)


Request = SubmitMessage | CancelMessage | CallMessage


def decode_request(frame: bytes) -> Request:
    """What a front asked of the engine; ProtocolError for a frame of another protocol version or another kind."""
    return cast(Request, _expect(frame, (SubmitMessage, CancelMessage, CallMessage)))


def decode_reply(frame: bytes) -> Reply:
    """The engine's answer to one request; ProtocolError as for ``decode_request``."""
    return cast(Reply, _expect(frame, (ResultReply, RepositoryReply, MetricsReply, DoneReply, ErrorReply, FailedReply)))


def decode_state(frame: bytes) -> EngineState:
    """The engine's broadcast; ProtocolError as for ``decode_request``."""
    return cast(EngineState, _expect(frame, (EngineState,)))


def _expect(frame: bytes, kinds: tuple[type[Any], ...]) -> object:
    message = SCHEMA.decode(frame)
    if not isinstance(message, kinds):
        raise ProtocolError(f"a {type(message).__name__} where {', '.join(kind.__name__ for kind in kinds)} belong")
    return message
