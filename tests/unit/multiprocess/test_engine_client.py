"""EngineClient against a real EngineProcess (its own thread and event loop, over ipc) around a scripted engine."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import msgpack
import numpy as np
import pytest
import zmq
from prometheus_client import REGISTRY

from app import metrics
from app.api.app import create_app
from app.engine.contract import EngineRequest, EngineResult, Priority, Timings
from app.engine.engine import Engine
from app.engine.errors import (
    DrainingError,
    EngineError,
    OverloadedError,
    UnknownVariantError,
    VariantNotReadyError,
)
from app.engine.models.catalogue import load_catalogue
from app.engine.status import RepositoryEntry, RepositoryState, VariantRuntime, VariantStatus
from app.multiprocess import channel, engine_process, front_end
from app.multiprocess.engine_client import EngineClient
from app.multiprocess.engine_process import EngineProcess
from app.multiprocess.service_metrics import ServiceMetrics
from app.settings import Settings
from tests.support.helpers import write_catalogue


@dataclass
class ScriptedEngine:
    """What EngineProcess reads of an engine; submit answers, raises or waits as a test says."""

    runtimes: dict[str, VariantRuntime]
    default_variant: str = "alpha"
    ready: bool = True
    live: bool = True
    draining: bool = False
    inflight: int = 0
    raises: EngineError | None = None
    hold: bool = False
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    requests: list[EngineRequest] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def variants(self) -> dict[str, VariantRuntime]:
        return self.runtimes

    async def submit(self, request: EngineRequest) -> EngineResult:
        assert 0.0 <= request.spent_s < 1.0
        self.requests.append(request)
        pairs, variant = request.pairs, request.variant
        self.calls.append(
            (list(pairs), variant, request.truncate, request.timeout_s, request.priority, request.language)
        )
        if self.raises is not None:
            raise self.raises
        if self.hold:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        probabilities = np.tile(np.array([[0.25, 0.5, 0.25]], dtype=np.float32), (len(pairs), 1))
        return EngineResult(str(variant), probabilities, [False] * len(pairs), Timings(0.001, 0.002, 0.003, 0.01))

    def repository_index(self) -> list[RepositoryEntry]:
        return [RepositoryEntry(name, RepositoryState.READY, "") for name in self.runtimes]

    def repository_entry(self, name: str) -> RepositoryEntry:
        return RepositoryEntry(name, RepositoryState.UNAVAILABLE, "unloaded")

    async def unload_variant(self, name: str) -> None:
        self.calls.append(("unload", name))


@dataclass
class Harness:
    engine: ScriptedEngine
    client: EngineClient
    server: EngineProcess
    loop: asyncio.AbstractEventLoop
    tasks: list[asyncio.Task[None]]

    def stop_publishing(self) -> None:
        self.loop.call_soon_threadsafe(self.tasks[0].cancel)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    catalogue = load_catalogue(
        write_catalogue(tmp_path / "variants.toml", tmp_path, [{"name": "alpha"}, {"name": "beta", "enabled": False}])
    )
    runtimes = {spec.name: VariantRuntime(spec) for spec in catalogue.variants}
    runtimes["alpha"].status = VariantStatus.READY
    runtimes["beta"].status = VariantStatus.DISABLED
    engine = ScriptedEngine(runtimes)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            server = EngineProcess(cast(Engine, engine), tmp_path, drain_timeout_s=1.0)
            holder["server"] = server
            holder["tasks"] = [loop.create_task(server.publish()), loop.create_task(server.receive())]
        except BaseException as error:
            holder["error"] = error
            raise
        finally:
            started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started.wait(10)
    assert "error" not in holder, holder["error"]
    client = EngineClient(catalogue, tmp_path, request_timeout_s=5.0)
    deadline = time.monotonic() + 10
    while not client.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    yield Harness(engine, client, holder["server"], loop, holder["tasks"])
    client.close()

    async def stop() -> None:
        tasks = [*holder["tasks"], *holder["server"]._calls.values()]  # calls still held by the scripted engine
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        holder["server"].close()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_state_comes_from_the_engine_broadcast(harness: Harness) -> None:
    client = harness.client
    assert client.ready
    assert client.live
    assert client.variant_ready("alpha")
    assert not client.variant_ready("beta")
    assert client.variants["alpha"].describe() == harness.engine.runtimes["alpha"].describe()
    assert client.variants["beta"].status is VariantStatus.DISABLED
    assert client.resolve(None).spec == harness.engine.runtimes["alpha"].spec
    with pytest.raises(UnknownVariantError):
        client.resolve("beta")  # disabled: as the engine resolves it
    before = metrics.ROUTED_REQUESTS.labels("alpha", "default")._value.get()
    assert client.route(None).spec.name == "alpha"
    assert metrics.ROUTED_REQUESTS.labels("alpha", "default")._value.get() == before + 1
    harness.engine.ready = False
    time.sleep(channel.STATE_INTERVAL_S * 4)
    assert not client.ready


async def test_predictions_and_their_options_reach_the_engine(harness: Harness) -> None:
    result = await harness.client.submit(
        EngineRequest([("a", "b"), ("c", "d")], "alpha", False, 0.5, priority=Priority.BATCH, language="fr")
    )
    assert result.variant == "alpha"
    np.testing.assert_array_equal(result.probabilities, np.array([[0.25, 0.5, 0.25]] * 2, dtype=np.float32))
    assert result.timings == Timings(0.001, 0.002, 0.003, 0.01)
    assert harness.engine.calls == [([("a", "b"), ("c", "d")], "alpha", False, 0.5, Priority.BATCH, "fr")]
    assert harness.client.inflight == 0


async def test_the_request_crosses_whole_with_the_time_this_front_end_spent(harness: Harness) -> None:
    """Without an encoder (the scripted engine names no fingerprint) the pairs go as text; the front end's own time
    is added to what the request had already spent; the HTTP request's id reaches the engine process."""
    sent = EngineRequest([("a", "b")], "alpha", timeout_s=2.0, spent_s=0.25, request_id="req-1")
    await harness.client.submit(sent)
    (received,) = harness.engine.requests
    assert received.encoded is None
    assert received.pairs == [("a", "b")]
    assert (received.variant, received.timeout_s, received.request_id) == ("alpha", 2.0, "req-1")
    assert 0.25 <= received.spent_s < 0.5


async def test_a_frame_of_another_protocol_is_dropped_and_the_engine_keeps_serving(harness: Harness) -> None:
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(channel.request_address(harness.client.run_dir))
    try:
        dealer.send(msgpack.packb(["predict", 0, [[("a", "b")], "alpha", True, None, "INTERACTIVE", None, 0.0]]))
        dealer.send(msgpack.packb(["0" * 12, 0, [0, [[["a", "b"]], "alpha"]]]))
    finally:
        dealer.close()
        context.term()
    result = await harness.client.submit(EngineRequest([("a", "b")], "alpha"))
    assert result.variant == "alpha"
    assert len(harness.engine.requests) == 1


async def test_engine_errors_are_raised_typed(harness: Harness) -> None:
    harness.engine.raises = OverloadedError("the queue is full", retry_after_s=3.0)
    with pytest.raises(OverloadedError) as raised:
        await harness.client.submit(EngineRequest([("a", "b")], "alpha"))
    assert raised.value.retry_after_s == 3.0


async def test_a_client_that_goes_away_cancels_the_engine_call(harness: Harness) -> None:
    harness.engine.hold = True
    call = asyncio.ensure_future(harness.client.submit(EngineRequest([("a", "b")], "alpha")))
    await asyncio.sleep(0.2)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await asyncio.to_thread(harness.engine.cancelled.wait, 5)


async def test_a_silent_engine_fails_what_waits_and_turns_unready(harness: Harness) -> None:
    harness.engine.hold = True
    call = asyncio.ensure_future(harness.client.submit(EngineRequest([("a", "b")], "alpha")))
    await asyncio.sleep(0.1)
    harness.stop_publishing()
    started = time.monotonic()
    with pytest.raises(VariantNotReadyError, match="engine process unavailable"):
        await call
    assert time.monotonic() - started < harness.client.channel.silence_s * 2 + 1
    assert not harness.client.ready
    assert not harness.client.live
    with pytest.raises(VariantNotReadyError):
        await harness.client.submit(EngineRequest([("a", "b")], "alpha"))


async def test_a_draining_front_end_refuses_new_requests_itself(harness: Harness) -> None:
    harness.client.begin_drain()
    assert not harness.client.ready
    with pytest.raises(DrainingError):
        await harness.client.submit(EngineRequest([("a", "b")], "alpha"))
    assert harness.engine.calls == []
    await asyncio.wait_for(harness.client.wait_idle(), 1)


async def test_repository_calls_are_forwarded(harness: Harness) -> None:
    assert harness.client.repository_index() == [
        RepositoryEntry("alpha", RepositoryState.READY, ""),
        RepositoryEntry("beta", RepositoryState.READY, ""),
    ]
    assert harness.client.repository_entry("alpha") == RepositoryEntry("alpha", RepositoryState.UNAVAILABLE, "unloaded")
    await harness.client.unload_variant("alpha")
    assert harness.engine.calls == [("unload", "alpha")]
    assert b"xnli_" in harness.client.engine_metrics()


def test_a_call_cancelled_before_it_starts_leaves_no_entry(harness: Harness) -> None:
    """A CANCEL buffered right behind its request cancels the task before it runs: its entry must still go."""
    harness.engine.hold = True
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(channel.request_address(harness.client.run_dir))
    try:
        frames = []
        for call_id in range(50):
            frames.append(channel.encode(channel.SubmitMessage(call_id, EngineRequest([("a", "b")], "alpha"))))
            frames.append(channel.encode(channel.CancelMessage(call_id)))
        for frame in frames:
            dealer.send(frame)
        deadline = time.monotonic() + 5
        while harness.server._calls and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert harness.server._calls == {}
    finally:
        dealer.close()
        context.term()


async def test_a_slow_engine_metrics_answer_does_not_block_the_front(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/metrics waits on the engine process in a thread: /health/live on the same front end answers meanwhile."""

    def slow_exposition(registry: Any) -> bytes:
        time.sleep(0.6)  # the engine process is busy (this blocks its loop, as a slow collection would)
        return b"# slow\n"

    monkeypatch.setattr(engine_process, "generate_latest", slow_exposition)
    folder = tmp_path / "front-metrics"
    folder.mkdir()
    collector = ServiceMetrics(harness.client.engine_metrics, folder)
    REGISTRY.register(collector)
    app = create_app(Settings(), harness.client)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://front") as http:
            started = time.monotonic()
            scrape = asyncio.ensure_future(http.get("/metrics"))
            await asyncio.sleep(0)  # the scrape starts first
            live = await http.get("/health/live")
            waited = time.monotonic() - started
            assert live.status_code == 200
            assert waited < 0.3, f"/health/live waited {waited:.2f}s behind the metrics call"
            assert (await scrape).status_code == 200
    finally:
        REGISTRY.unregister(collector)


def test_a_front_end_bounds_its_tokenization_backlog_as_the_engine_does(demo_catalogue: Path, tmp_path: Path) -> None:
    settings = Settings(
        catalogue=demo_catalogue, tokenization_workers=1, max_tokenizing_pairs=77, max_tokenizing_chars=2_000_000
    )
    client = front_end.engine_client(settings, tmp_path)
    try:
        assert (client.tokenization.max_pairs, client.tokenization.max_chars) == (77, 2_000_000)
    finally:
        client.close()
