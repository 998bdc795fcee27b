"""The wire between front ends and the engine process: addresses, message kinds and their msgpack encoding.

Requests (front DEALER -> engine ROUTER), one frame each: ``[kind, call_id, payload]``

* ``predict``: ``[pairs, variant, truncate, timeout_s, priority, language, spent_s]`` answered with a prediction;
  ``spent_s`` is the time the request already spent in the front end: the engine's deadline is that much nearer;
* ``predict_encoded``: ``[pairs, ids, truncated, fingerprint, tokenization_s, variant, truncate, timeout_s, priority,
  language]``: pairs the front end tokenized with the variant's encoder (``fingerprint`` names it), answered the same;
  ``tokenization_s`` (the front end's time on the request, its wait for a tokenizer thread included) is spent too;
* ``cancel``: the client of ``call_id`` hung up: the engine cancels that prediction (its queued pairs are dropped);
* ``call``: ``[method, args, kwargs]`` for the engine methods in :data:`CALLS` (repository, metrics scrape).

Replies (engine -> front), one frame: ``[call_id, status, body]`` with status OK, ENGINE_ERROR (an
:class:`app.engine.errors.EngineError`, rebuilt on the front with its type and attributes, so the API answers the
same status and JSON body as in one process) or FAILED (anything else, answered as the API's 500).

State (engine PUB -> front SUB), every :data:`STATE_INTERVAL_S`: :class:`EngineState`; a front that hears nothing
for ``XNLI_SERVE_ENGINE_SILENCE_S`` (default :data:`STALE_AFTER_S`) treats the engine process as gone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from app.engine import errors as engine_errors
from app.engine.status import PredictionResult, Timings

PREDICT = "predict"
PREDICT_ENCODED = "predict_encoded"
CANCEL = "cancel"
CALL = "call"

OK = 0
ENGINE_ERROR = 1
FAILED = 2

# Engine methods a front may call by name (the API's repository routes and the /metrics scrape).
CALLS = frozenset({"repository_index", "repository_entry", "load_variant", "unload_variant", "metrics"})

STATE_INTERVAL_S = 0.05
STALE_AFTER_S = 2.0  # the default of XNLI_SERVE_ENGINE_SILENCE_S (app.settings says why not lower)


def request_address(run_dir: Path) -> str:
    return f"ipc://{run_dir / 'engine.sock'}"


def state_address(run_dir: Path) -> str:
    return f"ipc://{run_dir / 'state.sock'}"


def pack(message: Any) -> bytes:
    packed: bytes = msgpack.packb(message, use_bin_type=True, default=str)
    return packed


def unpack(frame: bytes) -> Any:
    return msgpack.unpackb(frame, raw=False, strict_map_key=False)


def encode_result(result: PredictionResult) -> list[Any]:
    probabilities = np.ascontiguousarray(result.probabilities, dtype=np.float32)
    timings = result.timings
    return [
        result.variant,
        probabilities.tobytes(),
        probabilities.shape[0],
        list(result.truncated),
        [timings.tokenization_s, timings.queue_s, timings.inference_s, timings.total_s],
    ]


def decode_result(body: list[Any]) -> PredictionResult:
    variant, raw, rows, truncated, timings = body
    probabilities = np.frombuffer(raw, dtype=np.float32).reshape(rows, -1)
    return PredictionResult(variant, probabilities, list(truncated), Timings(*timings))


def _error_types() -> dict[str, type[engine_errors.EngineError]]:
    found: dict[str, type[engine_errors.EngineError]] = {}
    pending: list[type[engine_errors.EngineError]] = [engine_errors.EngineError]
    while pending:
        kind = pending.pop()
        found[kind.__name__] = kind
        pending.extend(kind.__subclasses__())
    return found


def encode_error(error: engine_errors.EngineError) -> list[Any]:
    """Type name, message and the attributes the API reads (retry_after_s, limit, pair_index, ...)."""
    message = error.args[0] if error.args else str(error)
    return [type(error).__name__, str(message), dict(vars(error))]


def decode_error(body: list[Any]) -> engine_errors.EngineError:
    name, message, attributes = body
    kind = _error_types().get(name, engine_errors.EngineError)
    error = kind.__new__(kind)
    Exception.__init__(error, message)
    vars(error).update(attributes)
    return error


@dataclass(frozen=True, slots=True)
class EngineState:
    """What the engine process publishes: the front ends answer health, /variants and routing from it."""

    ready: bool
    live: bool
    draining: bool
    default_variant: str
    # Per variant: its spec as JSON (``VariantSpec.model_dump(mode="json")``), ``VariantRuntime.describe()`` and the
    # fingerprint of the encoder it serves with (None before it is loaded): front ends load the same one to tokenize.
    variants: list[tuple[dict[str, Any], dict[str, Any], str | None]]
    sent_at: float = field(default_factory=time.time)

    def encode(self) -> bytes:
        return pack([self.ready, self.live, self.draining, self.default_variant, self.variants, self.sent_at])

    @classmethod
    def decode(cls, frame: bytes) -> EngineState:
        ready, live, draining, default_variant, variants, sent_at = unpack(frame)
        return cls(ready, live, draining, default_variant, [tuple(entry) for entry in variants], sent_at)
