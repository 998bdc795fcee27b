"""What a front-end process holds instead of the engine: the engine's methods and state that the API layer uses,
answered over ZeroMQ by the engine process (:mod:`app.frontend.engine_server`).

State (readiness, liveness, variants and their descriptions) comes from the engine's periodic broadcast, so health,
``/variants`` and routing cost no round trip; predictions, repository changes and the metrics scrape are requests.
Each front end tokenizes its own requests with the variant's ``PairEncoder``, loaded from the checkpoint folder the
broadcast names and checked against the engine's by fingerprint (:class:`FrontEncoders`), and sends the ids: the
engine process only admits, batches and runs them. Until a variant's encoder is loaded here, its pairs go as text.
Silence from the engine for ``channel.STALE_AFTER_S`` makes this front unready and unlive, and fails the requests it
is waiting on with 503 (the supervisor then stops every process: the orchestrator restarts the service).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from app import metrics
from app.engine.catalogue import Catalogue, VariantSpec
from app.engine.engine import PredictionResult, RepositoryEntry, RepositoryState, VariantRuntime, VariantStatus
from app.engine.errors import (
    DeadlineExceededError,
    DrainingError,
    EngineError,
    UnknownVariantError,
    VariantNotReadyError,
)
from app.engine.model_store import load_fast_tokenizer
from app.engine.scheduler import Priority
from app.engine.tokenization import PairEncoder, TokenizationPool
from app.engine.traffic import TrafficRouter
from app.frontend import channel

log = logging.getLogger(__name__)

SYNC_CALL_TIMEOUT_S = 10.0
# A prediction's answer comes by its deadline (the engine enforces it); past it by this much, the front stops waiting.
ANSWER_GRACE_S = 5.0


class EngineUnavailableError(EngineError):
    """The engine process failed a call for a reason that is not one of its typed errors, or is gone (500)."""


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


class FrontEncoders:
    """The served variants' ``PairEncoder``s in this front end, loaded in a thread from the checkpoint folders the
    engine's broadcast names, and again whenever a variant's encoder fingerprint there changes (a repository load or
    reload). An encoder is used only while its fingerprint equals the engine's; one that cannot be loaded, or loads
    different, is logged once and its variant's pairs go to the engine as text."""

    def __init__(self) -> None:
        self._wanted: dict[str, tuple[VariantSpec, str]] = {}
        self._encoders: dict[str, PairEncoder] = {}
        self._failed: set[tuple[str, str]] = set()
        self._changed = threading.Event()
        self._closed = threading.Event()
        self._loader = threading.Thread(target=self._load, name="front-encoders", daemon=True)
        self._loader.start()

    def want(self, wanted: dict[str, tuple[VariantSpec, str]]) -> None:
        if wanted != self._wanted:
            self._wanted = wanted
            self._changed.set()

    def settled(self) -> bool:
        """Every variant the engine serves has its encoder here, or failed to get one (its pairs go as text)."""
        return all(
            (name, fingerprint) in self._failed
            or (name in self._encoders and self._encoders[name].fingerprint == fingerprint)
            for name, (_, fingerprint) in self._wanted.items()
        )

    def get(self, name: str) -> PairEncoder | None:
        encoder = self._encoders.get(name)
        wanted = self._wanted.get(name)
        return encoder if encoder is not None and wanted is not None and wanted[1] == encoder.fingerprint else None

    def _load(self) -> None:
        while not self._closed.is_set():
            if not self._changed.wait(0.1):
                continue
            self._changed.clear()
            wanted = self._wanted
            for name in set(self._encoders) - set(wanted):
                del self._encoders[name]
            for name, (spec, fingerprint) in wanted.items():
                encoder = self._encoders.get(name)
                if (encoder is not None and encoder.fingerprint == fingerprint) or (name, fingerprint) in self._failed:
                    continue
                try:
                    encoder = load_encoder(spec)
                except Exception as error:
                    log.warning("variant %s: no tokenizer in this front end, pairs go as text: %s", name, error)
                    self._failed.add((name, fingerprint))
                    continue
                if encoder.fingerprint != fingerprint:
                    log.warning("variant %s: this front end's tokenizer is not the engine's, pairs go as text", name)
                    self._failed.add((name, fingerprint))
                    continue
                self._encoders[name] = encoder

    def close(self, timeout: float | None = None) -> None:
        self._closed.set()
        self._loader.join(timeout)


def load_encoder(spec: VariantSpec) -> PairEncoder:
    """The variant's encoder as the engine builds it: the checkpoint's fast tokenizer and the variant's length."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(spec.path, local_files_only=True)
    backend, _ = load_fast_tokenizer(spec, config)
    return PairEncoder(backend, spec.max_seq_len)


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
    ) -> None:
        self.run_dir = run_dir
        self.tokenization = TokenizationPool(tokenization_workers, max_tokenizing_pairs)
        self.encoders = FrontEncoders()
        self.request_timeout_s = request_timeout_s
        self.default_variant = catalogue.default_variant
        self.variants: dict[str, RemoteVariant] = {spec.name: _initial(spec) for spec in catalogue.variants}
        self.router = TrafficRouter(catalogue.traffic, catalogue.default_variant, traffic_seed)
        self.draining = False
        self.inflight = 0
        self._idle = asyncio.Event()
        self._state: channel.EngineState | None = None
        self._heard_at = 0.0
        self._specs: dict[bytes, VariantSpec] = {}
        self._closed = threading.Event()
        self._give_up = False
        self._ids = itertools.count()
        self._pending: dict[int, tuple[asyncio.Future[tuple[int, Any]], str | None]] = {}
        self._socket: zmq.asyncio.Socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._async_context = zmq.asyncio.Context()
        self._sync_context = zmq.Context()
        self._sync_socket = self._dealer(self._sync_context)
        self._sync_lock = threading.Lock()
        self._parent = os.getppid()
        self._listener = threading.Thread(target=self._listen, name="engine-state", daemon=True)
        self._listener.start()

    # -- channel ---------------------------------------------------------------------------------------------------

    def _dealer(self, context: zmq.Context[Any]) -> Any:
        socket = context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, 0)
        socket.setsockopt(zmq.RCVHWM, 0)
        socket.connect(channel.request_address(self.run_dir))
        return socket

    def _listen(self) -> None:
        """The engine's broadcasts (thread): apply each; exit the process if the supervisor is gone."""
        subscriber = self._sync_context.socket(zmq.SUB)
        subscriber.setsockopt(zmq.LINGER, 0)
        subscriber.setsockopt(zmq.SUBSCRIBE, b"")
        subscriber.setsockopt(zmq.RCVTIMEO, 100)
        subscriber.connect(channel.state_address(self.run_dir))
        try:
            while not self._closed.is_set():
                if os.getppid() != self._parent:
                    log.error("the supervisor is gone: this front end stops")
                    os.kill(os.getpid(), signal.SIGTERM)
                    self._parent = os.getppid()
                try:
                    frame = subscriber.recv()
                except zmq.Again:
                    continue
                self._apply(channel.EngineState.decode(frame))
        finally:
            subscriber.close()

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
        self._heard_at = time.monotonic()

    @property
    def connected(self) -> bool:
        """The engine process was heard from within ``channel.STALE_AFTER_S``."""
        return self._state is not None and time.monotonic() - self._heard_at < channel.STALE_AFTER_S

    def _start(self) -> zmq.asyncio.Socket:
        if self._socket is None:
            self._socket = self._dealer(self._async_context)
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._receive()), loop.create_task(self._watch())]
        return self._socket

    async def _receive(self) -> None:
        assert self._socket is not None
        while True:
            call_id, status, body = channel.unpack(await self._socket.recv())
            waiting = self._pending.get(call_id)
            if waiting is not None and not waiting[0].done():
                waiting[0].set_result((status, body))

    async def _watch(self) -> None:
        """Fail what waits on an engine process that fell silent (503 for predictions)."""
        while True:
            await asyncio.sleep(channel.STALE_AFTER_S / 4)
            if self._pending and not self.connected:
                log.error("the engine process is silent: failing %d waiting call(s)", len(self._pending))
                for future, variant in list(self._pending.values()):
                    if not future.done():
                        future.set_exception(
                            VariantNotReadyError(variant, "engine process unavailable")
                            if variant is not None
                            else EngineUnavailableError("the engine process is unavailable")
                        )

    async def _request(self, kind: str, payload: list[Any], variant: str | None, timeout_s: float | None) -> Any:
        socket = self._start()
        call_id = next(self._ids)
        future: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = (future, variant)
        try:
            await socket.send(channel.pack([kind, call_id, payload]))
            async with asyncio.timeout(timeout_s):
                status, body = await future
        except (asyncio.CancelledError, TimeoutError) as stopped:
            # The client hung up (or the answer is long overdue): the engine drops the request's queued pairs.
            socket.send(channel.pack([channel.CANCEL, call_id, None]))
            if isinstance(stopped, TimeoutError):
                raise DeadlineExceededError("no answer from the engine process within the request's deadline") from None
            raise
        finally:
            del self._pending[call_id]
        return _answer(status, body)

    def _call_sync(self, method: str, *args: Any) -> Any:
        """A blocking call (for the API's synchronous methods: repository index, metrics); seldom used."""
        if not self.connected:
            raise EngineUnavailableError("the engine process is unavailable")
        with self._sync_lock:
            call_id = next(self._ids)
            self._sync_socket.send(channel.pack([channel.CALL, call_id, [method, list(args), {}]]))
            deadline = time.monotonic() + SYNC_CALL_TIMEOUT_S
            while (left := deadline - time.monotonic()) > 0:
                if self._sync_socket.poll(int(left * 1000) + 1):
                    answer_id, status, body = channel.unpack(self._sync_socket.recv())
                    if answer_id == call_id:
                        return _answer(status, body)
        raise EngineUnavailableError(f"the engine process did not answer {method} within {SYNC_CALL_TIMEOUT_S}s")

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
        while self.inflight:
            self._idle.clear()
            await self._idle.wait()

    def close(self, timeout: float | None = 30.0) -> None:
        self._closed.set()
        self.encoders.close(timeout)
        self.tokenization.close()
        for task in self._tasks:
            task.cancel()
        self._listener.join(timeout)
        if self._socket is not None:
            self._socket.close()
        self._sync_socket.close()
        self._async_context.term()
        self._sync_context.term()

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
        runtime = self.variants.get(name or self.default_variant)
        if runtime is None or not runtime.spec.enabled:
            served = [runtime.spec.name for runtime in self.variants.values() if runtime.spec.enabled]
            raise UnknownVariantError(str(name or self.default_variant), served)
        return runtime

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
        return [_entry(entry) for entry in self._call_sync("repository_index")]

    def repository_entry(self, name: str) -> RepositoryEntry:
        return _entry(self._call_sync("repository_entry", name))

    async def load_variant(self, name: str, *, min_queue_pairs: int = 1) -> None:
        await self._request(channel.CALL, ["load_variant", [name], {"min_queue_pairs": min_queue_pairs}], None, None)

    async def unload_variant(self, name: str) -> None:
        await self._request(channel.CALL, ["unload_variant", [name], {}], None, None)

    def engine_metrics(self) -> bytes:
        """The engine process's Prometheus exposition (every engine series; the front ends hold the HTTP ones)."""
        text: bytes = self._call_sync("metrics")
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
        if self.draining or not self.connected:
            error: EngineError = (
                DrainingError("the service is shutting down and takes no new requests")
                if self.draining
                else VariantNotReadyError(name, "engine process unavailable")
            )
            metrics.REQUEST_FAILURES.labels(name, error.reason).inc()
            raise error
        timeout = self.request_timeout_s if timeout_s is None else min(timeout_s, self.request_timeout_s)
        self.inflight += 1
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
            body = await self._request(kind, payload, name, timeout + ANSWER_GRACE_S)
            return channel.decode_result(body)
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()


def _answer(status: int, body: Any) -> Any:
    if status == channel.OK:
        return body
    if status == channel.ENGINE_ERROR:
        raise channel.decode_error(body)
    raise EngineUnavailableError(str(body))


def _entry(fields: list[str]) -> RepositoryEntry:
    name, state, reason = fields
    return RepositoryEntry(name, RepositoryState(state), reason)
