"""W3C trace context in and out of a str->str carrier: HTTP headers, gRPC metadata, the engine channel's field.

Transport-neutral on purpose: a transport lower-cases nothing for us, so keys are matched case-insensitively.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span
from opentelemetry.trace.propagation import set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["FIELDS", "extract", "inject", "traceparent"]

_PROPAGATOR = TraceContextTextMapPropagator()
FIELDS: frozenset[str] = frozenset(_PROPAGATOR.fields)  # traceparent, tracestate


class _CaseInsensitive(Getter[Mapping[str, str]]):
    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            for name, candidate in carrier.items():
                if name.lower() == key:
                    value = candidate
                    break
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return [name.lower() for name in carrier]


_GETTER = _CaseInsensitive()


def extract(carrier: Mapping[str, str]) -> Context:
    """The context a caller sent (its ``traceparent`` and ``tracestate``); an empty context when it sent none or a
    malformed one, so the span started in it is a new trace's root."""
    return _PROPAGATOR.extract(carrier, Context(), _GETTER)


def inject(span: Span) -> dict[str, str]:
    """``span``'s context as a carrier (``traceparent``, and ``tracestate`` when it has one)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, set_span_in_context(span))
    return carrier


def traceparent(span: Span) -> str | None:
    """The ``traceparent`` value naming ``span``; None for an invalid span."""
    return inject(span).get("traceparent")
