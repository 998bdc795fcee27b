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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app import metrics
from app.engine.errors import (
    EngineError,
    VariantNotReadyError,
)
from app.engine.gate import Inflight, refuse_while_draining, request_timeout, resolve_variant
from app.engine.models.catalogue import Catalogue, VariantSpec
from app.engine.scheduler.requests import Priority
from app.engine.status import PredictionResult, RepositoryEntry, RepositoryState, VariantRuntime, VariantStatus
from app.engine.tokenization import DEFAULT_MAX_TOKENIZING_CHARS, TokenizationPool
from app.engine.traffic.split import TrafficRouter
from app.multiprocess import channel
from app.multiprocess.channel_client import EngineChannel
from app.multiprocess.front_encoders import FrontEncoders

log = logging.getLogger(__name__)

__all__ = ["EngineClient", "RemoteVariant"]

# A prediction's answer comes by its deadline (the engine enforces it); past it by this much, the front stops waiting.
ANSWER_GRACE_S = 5.0


class RemoteVariant:
    """A variant as the engine process last described it: ``spec``, ``status`` and ``describe()``."""

    __slots__ = ("described", "spec")

    def __init__(self, spec: VariantSpec, described: dict[str, Any]) -> None:
        self.spec = spec
        self.described = described

    @property
    def status(self) -> VariantStatus:
        return VariantStatus(self.described["status"])

    @property
    def error(self) -> str | None:
        error: str | None = self.described.get("error")
        return error

    def describe(self) -> dict[str, Any]:
        return dict(self.described)


def _initial(spec: VariantSpec) -> RemoteVariant:
    """Before the engine's first broadcast: what the engine itself says before loading (pending or disabled)."""
    runtime = VariantRuntime(spec, status=VariantStatus.PENDING if spec.enabled else VariantStatus.DISABLED)
    return RemoteVariant(spec, runtime.describe())


class EngineClient:
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
        self.request_timeout_s = request_timeout_s
        self.default_variant = catalogue.default_variant
        self.variants: dict[str, RemoteVariant] = {spec.name: _initial(spec) for spec in catalogue.variants}
        self.router = TrafficRouter(catalogue.traffic, catalogue.default_variant, traffic_seed)
        self.draining = False
        self._inflight = Inflight()
        self._state: channel.EngineState | None = None
        self._specs: dict[bytes, VariantSpec] = {}
        self._closed = threading.Event()
        self._give_up = False
        self.channel = EngineChannel(run_dir, self._apply, engine_silence_s)

    def _apply(self, state: channel.EngineState) -> None:
        variants: dict[str, RemoteVariant] = {}
        wanted: dict[str, tuple[VariantSpec, str]] = {}
        for spec_json, described, fingerprint in state.variants:
            key = channel.pack(spec_json)
            spec = self._specs.get(key)
            if spec is None:
                spec = self._specs[key] = VariantSpec.model_validate(spec_json)
            variants[spec.name] = RemoteVariant(spec, described)
            if fingerprint is not None:
                wanted[spec.name] = (spec, fingerprint)
        self.variants = variants
        self.encoders.want(wanted)
        self.default_variant = state.default_variant
        self._state = state

    @property
    def connected(self) -> bool:
        """The engine process was heard from within ``engine_silence_s``."""
        return self.channel.connected

    # -- lifecycle (what the app's lifespan and the draining server call) ------------------------------------------

    def load(self) -> None:
        """Wait (in a thread) until the engine process has loaded every variant and this front end their tokenizers;
        raise if the engine's loading failed."""
        while not (self._closed.is_set() or self._give_up or self.draining):
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
        self.draining = True

    async def wait_idle(self) -> None:
        await self._inflight.wait_idle()

    @property
    def inflight(self) -> int:
        """Requests this front end has forwarded and not had answered yet."""
        return self._inflight.count

    def close(self, timeout: float | None = 30.0) -> None:
        self._closed.set()
        self.encoders.close(timeout)
        self.tokenization.close()
        self.channel.close(timeout)

    # -- state -----------------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        state = self._state
        return self.connected and state is not None and state.ready and not self.draining

    @property
    def live(self) -> bool:
        """Live while the engine starts (not heard from yet) and while it is heard from and itself live."""
        state = self._state
        return state is None or (self.connected and state.live)

    def resolve(self, name: str | None) -> RemoteVariant:
        return resolve_variant(self.variants, self.default_variant, name)

    def variant_ready(self, name: str) -> bool:
        runtime = self.variants.get(name)
        state = self._state
        return (
            runtime is not None
            and runtime.spec.enabled
            and runtime.status is VariantStatus.READY
            and self.connected
            and state is not None
            and state.live
            and not state.draining
            and not self.draining
        )

    def route(self, variant: str | None, routing_key: str | None = None) -> RemoteVariant:
        """As ``Engine.route``: the traffic split is decided here, from the engine's broadcast readiness."""
        decision = self.router.choose(variant, routing_key, self.variant_ready)
        runtime = self.resolve(decision.variant)
        metrics.ROUTED_REQUESTS.labels(runtime.spec.name, str(decision.route)).inc()
        return runtime

    # -- repository ------------------------------------------------------------------------------------------------

    def repository_index(self) -> list[RepositoryEntry]:
        return [_entry(entry) for entry in self.channel.call_sync("repository_index")]

    def repository_entry(self, name: str) -> RepositoryEntry:
        return _entry(self.channel.call_sync("repository_entry", name))

    async def load_variant(self, name: str, *, min_queue_pairs: int = 1) -> None:
        await self.channel.request(
            channel.CALL, ["load_variant", [name], {"min_queue_pairs": min_queue_pairs}], None, None
        )

    async def unload_variant(self, name: str) -> None:
        await self.channel.request(channel.CALL, ["unload_variant", [name], {}], None, None)

    def engine_metrics(self) -> bytes:
        """The engine process's Prometheus exposition (every engine series; the front ends hold the HTTP ones)."""
        text: bytes = self.channel.call_sync("metrics")
        return text

    # -- inference -------------------------------------------------------------------------------------------------

    async def predict(
        self,
        pairs: Sequence[tuple[str, str]],
        variant: str | None = None,
        truncate: bool = True,
        timeout_s: float | None = None,
        *,
        priority: Priority = Priority.INTERACTIVE,
        language: str | None = None,
    ) -> PredictionResult:
        """``Engine.predict`` in the engine process: admission, deadline and cancellation are decided there."""
        if priority is Priority.SHADOW:
            raise ValueError("shadow priority is reserved for the engine's own shadow work")
        arrived = time.perf_counter()  # the deadline runs from here: the engine subtracts what this front end spends
        name = self.resolve(variant).spec.name
        try:
            refuse_while_draining(self.draining)
            if not self.connected:
                raise VariantNotReadyError(name, "engine process unavailable")
        except EngineError as refused:
            metrics.REQUEST_FAILURES.labels(name, refused.reason).inc()
            raise
        timeout = request_timeout(self.request_timeout_s, timeout_s)
        self._inflight.enter()
        try:
            encoder = self.encoders.get(name)
            if encoder is None:
                spent_s = time.perf_counter() - arrived
                kind, payload = (
                    channel.PREDICT,
                    [list(pairs), name, truncate, timeout_s, priority.name, language, spent_s],
                )
            else:
                try:
                    encoded = await self.tokenization.encode(encoder, pairs, truncate)
                except EngineError as refused:  # too long, or this front end's tokenizer backlog is full
                    metrics.REQUEST_FAILURES.labels(name, refused.reason).inc()
                    raise
                tokenization_s = time.perf_counter() - arrived  # with the wait for a tokenizer thread
                kind = channel.PREDICT_ENCODED
                payload = [
                    list(pairs),
                    encoded.ids,
                    encoded.truncated,
                    encoder.fingerprint,
                    tokenization_s,
                    name,
                    truncate,
                    timeout_s,
                    priority.name,
                    language,
                ]
            body = await self.channel.request(kind, payload, name, timeout + ANSWER_GRACE_S)
            return channel.decode_result(body)
        finally:
            self._inflight.leave()


def _entry(fields: list[str]) -> RepositoryEntry:
    name, state, reason = fields
    return RepositoryEntry(name, RepositoryState(state), reason)
