"""What a front-end process holds instead of the engine: the engine's methods and state that the API layer uses,
answered over ZeroMQ by the engine process (:mod:`app.multiprocess.engine_process`).

State (readiness, liveness, variants and their descriptions) comes from the engine's periodic broadcast, so health,
``/variants`` and routing cost no round trip; predictions, repository changes and the metrics scrape are requests.
Each front end tokenizes its own requests with the variant's ``PairEncoder``, loaded from the checkpoint folder the
broadcast names and checked against the engine's by fingerprint (:class:`FrontEncoders`), and sends the ids: the
engine process only admits, batches and runs them. Until a variant's encoder is loaded here, its pairs go as text.
Silence from the engine for ``engine_silence_s`` makes this front unready and unlive, and fails the requests it
is waiting on with 503 (the supervisor then stops every process: the orchestrator restarts the service).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from app import metrics, tracing
from app.engine.contract import EncodedInputs, EngineRequest, EngineResult
from app.engine.errors import EngineError, VariantNotReadyError
from app.engine.gate import RequestGate
from app.engine.models.catalogue import Catalogue, VariantSpec
from app.engine.status import RepositoryEntry, VariantRuntime, VariantStatus
from app.engine.tokenization import DEFAULT_MAX_TOKENIZING_CHARS, TokenizationPool
from app.engine.traffic.split import TrafficRouter
from app.multiprocess import channel
from app.multiprocess.channel_client import EngineChannel
from app.multiprocess.front_encoders import FrontEncoders
from app.tracing import propagation
from app.tracing import spans as trace_spans

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger(__name__)

__all__ = ["EngineClient", "RemoteVariant"]

# A prediction's answer comes by its deadline (the engine enforces it); past it by this much, the front stops waiting.
ANSWER_GRACE_S = 5.0


class RemoteVariant:
    """A variant as the engine process last described it: ``spec``, ``status`` and ``describe()``."""

    __slots__ = ("spec", "state")

    def __init__(self, spec: VariantSpec, state: channel.VariantState) -> None:
        self.spec = spec
        self.state = state

    @property
    def status(self) -> VariantStatus:
        return self.state.status

    @property
    def error(self) -> str | None:
        return self.state.error

    def describe(self) -> dict[str, Any]:
        return dict(self.state.description)


def _initial(spec: VariantSpec) -> RemoteVariant:
    """Before the engine's first broadcast: what the engine itself says before loading (pending or disabled)."""
    runtime = VariantRuntime(spec, status=VariantStatus.PENDING if spec.enabled else VariantStatus.DISABLED)
    state = channel.VariantState(spec.model_dump(mode="json"), runtime.status, None, runtime.describe(), None)
    return RemoteVariant(spec, state)


class EngineClient:
    """What a front end holds instead of the Engine: the same RequestGate and contract, the work forwarded."""

    def __init__(
        self,
        catalogue: Catalogue,
        run_dir: Path,
        request_timeout_s: float,
        traffic_seed: int | None = None,
        *,
        tokenization_workers: int = 2,
        max_tokenizing_pairs: int = 1024,
        max_tokenizing_chars: int = DEFAULT_MAX_TOKENIZING_CHARS,
        engine_silence_s: float = channel.STALE_AFTER_S,
    ) -> None:
        self.run_dir = run_dir
        self.tokenization = TokenizationPool(tokenization_workers, max_tokenizing_pairs, max_tokenizing_chars)
        self.encoders = FrontEncoders()
        variants = {spec.name: _initial(spec) for spec in catalogue.variants}
        router = TrafficRouter(catalogue.traffic, catalogue.default_variant, traffic_seed)
        # The gate's variants are the engine's last broadcast, replaced whole on each (see ``_apply``).
        self.gate = RequestGate(variants, catalogue.default_variant, router, request_timeout_s, self.variant_ready)
        self._state: channel.EngineState | None = None
        self._specs: dict[bytes, VariantSpec] = {}
        self._closed = threading.Event()
        self._give_up = False
        self.channel = EngineChannel(run_dir, self._apply, engine_silence_s)

    def _apply(self, state: channel.EngineState) -> None:
        """A broadcast (in the channel's listener thread): the variants, their encoders and the default variant."""
        variants: dict[str, RemoteVariant] = {}
        wanted: dict[str, tuple[VariantSpec, str]] = {}
        for variant in state.variants:
            key = wire_key(variant.spec)
            spec = self._specs.get(key)
            if spec is None:
                spec = self._specs[key] = VariantSpec.model_validate(variant.spec)
            variants[spec.name] = RemoteVariant(spec, variant)
            if variant.fingerprint is not None:
                wanted[spec.name] = (spec, variant.fingerprint)
        self.gate.variants = variants
        self.encoders.want(wanted)
        self.gate.default_variant = state.default_variant
        self._state = state

    @property
    def variants(self) -> Mapping[str, RemoteVariant]:
        return self.gate.variants

    @property
    def default_variant(self) -> str:
        return self.gate.default_variant

    @property
    def draining(self) -> bool:
        return self.gate.draining

    @property
    def connected(self) -> bool:
        """The engine process was heard from within ``engine_silence_s``."""
        return self.channel.connected

    # -- lifecycle (what the app's lifespan and the draining server call) ------------------------------------------

    def load(self) -> None:
        """Wait (in a thread) until the engine process has loaded every variant and this front end their tokenizers;
        raise if the engine's loading failed."""
        while not (self._closed.is_set() or self._give_up or self.gate.draining):
            state = self._state
            if state is not None and state.ready and self.encoders.settled():
                return
            if state is not None and not state.live:
                raise RuntimeError("the engine process failed to load its variants")
            time.sleep(channel.STATE_INTERVAL_S)

    def stop_waiting(self) -> None:
        """The process is exiting: ``load`` stops waiting for the engine."""
        self._give_up = True

    def begin_drain(self) -> None:
        """This front end takes no new request (readiness 503); the engine keeps answering what it forwarded. The
        supervisor drains the engine process only once every front end has drained."""
        self.gate.begin_drain()

    async def wait_idle(self) -> None:
        await self.gate.wait_idle()

    @property
    def inflight(self) -> int:
        """Requests this front end has forwarded and not had answered yet."""
        return self.gate.inflight

    def close(self, timeout: float | None = 30.0) -> None:
        self._closed.set()
        self.encoders.close(timeout)
        self.tokenization.close()
        self.channel.close(timeout)

    # -- state -----------------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        state = self._state
        return self.connected and state is not None and state.ready and not self.gate.draining

    @property
    def live(self) -> bool:
        """Live while the engine starts (not heard from yet) and while it is heard from and itself live."""
        state = self._state
        return state is None or (self.connected and state.live)

    def resolve(self, name: str | None) -> RemoteVariant:
        return self.gate.resolve(name)

    def variant_ready(self, name: str) -> bool:
        runtime = self.gate.variants.get(name)
        state = self._state
        return (
            runtime is not None
            and runtime.spec.enabled
            and runtime.status is VariantStatus.READY
            and self.connected
            and state is not None
            and state.live
            and not state.draining
            and not self.gate.draining
        )

    def route(self, variant: str | None, routing_key: str | None = None) -> RemoteVariant:
        """As ``Engine.route``: the traffic split is decided here, from the engine's broadcast readiness."""
        return self.gate.route(variant, routing_key)

    # -- repository ------------------------------------------------------------------------------------------------

    def repository_index(self) -> list[RepositoryEntry]:
        reply = self.channel.call_sync(channel.EngineCall.REPOSITORY_INDEX)
        assert isinstance(reply, channel.RepositoryReply)
        return reply.entries

    def repository_entry(self, name: str) -> RepositoryEntry:
        reply = self.channel.call_sync(channel.EngineCall.REPOSITORY_ENTRY, name)
        assert isinstance(reply, channel.RepositoryReply)
        return reply.entries[0]

    async def load_variant(self, name: str, *, min_queue_pairs: int = 1) -> None:
        call = channel.CallMessage(self.channel.next_call_id(), channel.EngineCall.LOAD_VARIANT, name, min_queue_pairs)
        await self.channel.request(call, None, None)

    async def unload_variant(self, name: str) -> None:
        call = channel.CallMessage(self.channel.next_call_id(), channel.EngineCall.UNLOAD_VARIANT, name)
        await self.channel.request(call, None, None)

    def engine_metrics(self) -> bytes:
        """The engine process's Prometheus exposition (every engine series; the front ends hold the HTTP ones)."""
        reply = self.channel.call_sync(channel.EngineCall.METRICS)
        assert isinstance(reply, channel.MetricsReply)
        return reply.exposition

    # -- inference -------------------------------------------------------------------------------------------------

    async def submit(self, request: EngineRequest) -> EngineResult:
        """``Engine.submit`` in the engine process: admission, deadline and cancellation are decided there. This front
        end tokenizes the pairs when it holds the variant's encoder, and adds its own time to ``spent_s``."""
        arrived = time.perf_counter()  # the deadline runs from here: the engine subtracts what this front end spends
        gate = self.gate
        gate.refuse_shadow_priority(request.priority)
        name = request.variant
        try:
            gate.refuse_while_draining()
            if not self.connected:
                raise VariantNotReadyError(name, "engine process unavailable")
        except EngineError as refused:
            metrics.REQUEST_FAILURES.labels(name, refused.reason).inc()
            raise
        timeout = gate.timeout(request.timeout_s)
        # Tracing (issue #27): this front end's span of the call; its context crosses the channel in the request.
        span = self._trace(request) if tracing.STATE.active else None
        gate.enter()
        try:
            encoder = self.encoders.get(name)
            encoded: EncodedInputs | None = None
            if encoder is not None:
                try:
                    pairs = await self.tokenization.encode(encoder, request.pairs, request.truncate)
                except EngineError as refused:  # too long, or this front end's tokenizer backlog is full
                    metrics.REQUEST_FAILURES.labels(name, refused.reason).inc()
                    if span is not None:
                        trace_spans.record(span, "tokenization", arrived, time.perf_counter(), error=refused.reason)
                    raise
                encoded = EncodedInputs(pairs.ids, pairs.truncated, encoder.fingerprint)
                if span is not None:
                    trace_spans.record(
                        span, "tokenization", arrived, time.perf_counter(), {"xnli.pairs": len(pairs.ids)}
                    )
            # Encoded: the time spent so far is tokenization (with the wait for a tokenizer thread).
            forwarded = EngineRequest(
                request.pairs,
                name,
                request.truncate,
                request.timeout_s,
                request.priority,
                request.language,
                request.spent_s + time.perf_counter() - arrived,
                encoded,
                request.request_id,
                self._trace_context(request, span) if tracing.STATE.active else request.trace_context,
            )
            message = channel.SubmitMessage(self.channel.next_call_id(), forwarded)
            reply = await self.channel.request(message, name, timeout + ANSWER_GRACE_S)
            assert isinstance(reply, channel.ResultReply)
            return reply.result
        except EngineError as error:
            if span is not None:
                span.set_attribute("error.type", error.reason)
                trace_spans.end(span, error.reason)
                span = None
            raise
        finally:
            gate.leave()
            if span is not None:
                span.end()

    @staticmethod
    def _trace_context(request: EngineRequest, span: Span | None) -> dict[str, str] | None:
        """Tracing (issue #27): the context the engine process continues: this call's span, or the unsampled
        request's own (so the engine does not sample it again as a new trace)."""
        from opentelemetry.trace import get_current_span

        return propagation.inject(span if span is not None else get_current_span()) or request.trace_context

    @staticmethod
    def _trace(request: EngineRequest) -> Span | None:
        """Tracing (issue #27): the span of a call to the engine process, a child of the request's span here."""
        from opentelemetry.trace import SpanKind

        attributes: dict[str, int | str] = {"xnli.variant": request.variant, "xnli.pairs": len(request.pairs)}
        return trace_spans.start_span("engine call", attributes, kind=SpanKind.CLIENT)


def wire_key(spec_json: dict[str, Any]) -> bytes:
    """A variant spec's JSON as bytes, to reuse the VariantSpec validated from the same JSON before."""
    return orjson.dumps(spec_json)
