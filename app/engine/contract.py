"""The engine's contract with its callers, the same in one process and across the multi-process channel: an
:class:`EngineRequest` goes in (``Engine.submit``, or ``EngineClient.submit`` which forwards it to the engine process),
an :class:`EngineResult` comes out, or an ``app.engine.errors.EngineError``.

Dataclasses of plain types, so ``app.multiprocess.channel`` encodes them from their fields (its schema is these
classes, not a second copy of them) and callers in one process pay nothing for the wire. Treat them as immutable. The
request and its encoded inputs are built on every request, up to three times across processes, so they are not
``frozen``: a frozen dataclass costs about five times as much to build (1.6 us against 0.3 us for nine fields).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt


class Priority(IntEnum):
    """Lanes of a queue, served in this order; lower values run first."""

    INTERACTIVE = 0
    BATCH = 1
    SHADOW = 2  # the engine's own shadow work: a client request never asks for it

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(slots=True)
class EncodedInputs:
    """A request's pairs already tokenized by a front end with the variant's ``PairEncoder`` (same truncation and
    length refusals). ``fingerprint`` names that encoder: the engine uses the ids only if it is the one the variant
    serves with now (a reload may have changed it since), else it tokenizes the pairs itself."""

    ids: list[list[int]]
    truncated: list[bool]
    fingerprint: str


@dataclass(slots=True)
class EngineRequest:
    """One prediction request, as routed: ``variant`` is the variant that answers (the caller routed it once, with
    ``route``; the engine only finds that name's current version).

    ``timeout_s`` may shorten the engine's request timeout, never lengthen it; ``spent_s`` is the time the request
    already spent before the engine got it (in a front-end process): its answer is due that much earlier. With
    ``encoded``, that time is the front end's tokenization (with its wait for a tokenizer thread) and is reported as
    such. ``pairs`` always travel: the engine tokenizes them when ``encoded`` is absent or outdated, and a shadow
    whose candidate tokenizes differently needs them. ``language`` (an ISO 639-1 code) labels the prediction and
    shadow counters; ``request_id`` is the HTTP request's id, for the engine process's logs.
    """

    pairs: Sequence[tuple[str, str]]
    variant: str
    truncate: bool = True
    timeout_s: float | None = None
    priority: Priority = Priority.INTERACTIVE
    language: str | None = None
    spent_s: float = 0.0
    encoded: EncodedInputs | None = None
    request_id: str | None = None
    # Tracing (issue #27): the caller's W3C trace context (``traceparent``, ``tracestate``) when it is traced, so the
    # engine process's spans join the front end's trace.
    trace_context: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Timings:
    """Where a request's time went, in seconds (the X-*-Time response headers)."""

    tokenization_s: float
    queue_s: float
    inference_s: float
    total_s: float


@dataclass(frozen=True, slots=True)
class EngineResult:
    """The answer to an EngineRequest: one row of probabilities (in ``LABELS`` order) per pair, in order."""

    variant: str
    probabilities: npt.NDArray[np.float32]
    truncated: list[bool]
    timings: Timings
    # --- issue #26: the head's float32 logits, same rows and label order as ``probabilities`` -------------------
    # Zero-shot classification softmaxes the entailment logits across a text's labels, which probabilities cannot
    # give. The engine always sets them; None only in results built by hand (tests, fakes of the engine).
    logits: npt.NDArray[np.float32] | None = None
