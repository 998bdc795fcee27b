"""Front ends tokenize: a real Engine in an EngineProcess (its own thread and loop) and an EngineClient over ipc.

The engine process's tokenization pool is counted: it is never called for a request a front end encoded, the answers
are bit for bit those of ``Engine.predict``, a too-long pair is refused with the same error, and shadows still compare.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from prometheus_client import REGISTRY

from app.engine.contract import EncodedInputs, EngineRequest, EngineResult
from app.engine.engine import Engine
from app.engine.errors import (
    DeadlineExceededError,
    DeadlineTooShortError,
    EngineError,
    InputTooLongError,
    OverloadedError,
)
from app.engine.models.catalogue import Catalogue, load_catalogue
from app.engine.tokenization import EncodedPairs, PairEncoder
from app.multiprocess.engine_client import EngineClient
from app.multiprocess.engine_process import EngineProcess
from app.multiprocess.front_encoders import FrontEncoders, load_encoder
from app.samples import sample_pairs
from tests.support.helpers import write_catalogue

T = TypeVar("T")
PAIRS = [(pair.premise, pair.hypothesis) for pair in sample_pairs()[:12]]
LONG = [("word " * 400, "short")]
SHADOWS = [("ft-primary", "ft-twin"), ("ft-primary", "ft-short")]


@dataclass
class Setup:
    engine: Engine
    loop: asyncio.AbstractEventLoop
    calls: list[int]
    catalogue: Catalogue
    folder: Path
    client: EngineClient | None = None

    @property
    def front(self) -> EngineClient:
        assert self.client is not None
        return self.client

    def on_engine(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)


def shadow_pairs(primary: str, candidate: str) -> float:
    total = 0.0
    for family in REGISTRY.collect():
        if family.name == "xnli_shadow_pairs":
            for sample in family.samples:
                labels = sample.labels
                if sample.name.endswith("_total") and (labels["primary"], labels["candidate"]) == (primary, candidate):
                    total += sample.value
    return total


@pytest.fixture(scope="module")
def engine_setup(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("front_tokenization")
    path = write_catalogue(
        folder / "variants.toml",
        demo_store,
        # ft-short: the same checkpoint, another max_seq_len: another encoder, so the engine tokenizes its shadow.
        [{"name": "ft-primary"}, {"name": "ft-twin"}, {"name": "ft-short", "max_seq_len": 64}],
    )
    path.write_text(
        path.read_text(encoding="utf-8")
        + "".join(
            f'\n[[traffic.shadow]]\nprimary = "{primary}"\ncandidate = "{candidate}"\nfraction = 1.0\n'
            for primary, candidate in SHADOWS
        ),
        encoding="utf-8",
    )
    catalogue = load_catalogue(path)
    engine = Engine(catalogue, tokenization_workers=1, torch_threads=1, traffic_seed=0)
    engine.preflight()
    engine.load()
    calls: list[int] = []
    encode = engine.tokenization.encode

    async def counted(encoder: PairEncoder, pairs: Sequence[tuple[str, str]], truncate: bool) -> EncodedPairs:
        calls.append(len(pairs))
        return await encode(encoder, pairs, truncate)

    engine.tokenization.encode = counted  # type: ignore[method-assign]
    loop = asyncio.new_event_loop()
    holder: dict[str, Any] = {}
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        server = EngineProcess(engine, folder, drain_timeout_s=1.0)
        holder["server"] = server
        holder["tasks"] = [loop.create_task(server.publish()), loop.create_task(server.receive())]
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    yield Setup(engine, loop, calls, catalogue, folder)

    async def stop() -> None:
        await engine.wait_shadows()
        tasks = [*holder["tasks"], *holder["server"]._calls.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        holder["server"].close()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()
    engine.close()


@pytest.fixture
def setup(engine_setup: Setup) -> Iterator[Setup]:
    """A new front end for each test (its socket tasks live on the test's event loop)."""
    client = EngineClient(engine_setup.catalogue, engine_setup.folder, request_timeout_s=10.0)
    client.load()  # returns once the engine is ready and this front end holds every variant's encoder
    engine_setup.client = client
    yield engine_setup
    client.close()


def assert_same(front: EngineResult, engine: EngineResult) -> None:
    assert front.variant == engine.variant
    assert front.truncated == engine.truncated
    np.testing.assert_array_equal(front.probabilities, engine.probabilities)  # bit for bit


def test_the_front_end_loads_the_engines_encoders(setup: Setup) -> None:
    fingerprints = {}
    for name, runtime in setup.engine.variants.items():
        assert runtime.encoder is not None
        front = setup.front.encoders.get(name)
        assert front is not None
        assert front.fingerprint == runtime.encoder.fingerprint
        assert load_encoder(runtime.spec).fingerprint == front.fingerprint  # the same every time it is loaded
        fingerprints[name] = front.fingerprint
    assert fingerprints["ft-primary"] == fingerprints["ft-twin"] != fingerprints["ft-short"]


@pytest.mark.parametrize(("pairs", "truncate"), [(PAIRS[:1], True), (PAIRS, True), (PAIRS + LONG, True)])
async def test_the_engine_does_not_tokenize_what_a_front_end_encoded(
    setup: Setup, pairs: list[tuple[str, str]], truncate: bool
) -> None:
    setup.calls.clear()
    front = await setup.front.submit(EngineRequest(pairs, "ft-twin", truncate))
    assert setup.calls == []
    assert front.timings.tokenization_s > 0
    engine = setup.on_engine(setup.engine.predict(pairs, "ft-twin", truncate))
    assert setup.calls == [len(pairs)]  # the count is live: the single-process path tokenizes in the engine
    assert_same(front, engine)
    assert front.truncated[-1] is (pairs[-1] == LONG[0])


async def test_a_too_long_pair_without_truncation_is_refused_the_same(setup: Setup) -> None:
    setup.calls.clear()
    with pytest.raises(InputTooLongError) as front:
        await setup.front.submit(EngineRequest([PAIRS[0], *LONG], "ft-twin", truncate=False))
    assert setup.calls == []
    with pytest.raises(InputTooLongError) as engine:
        setup.on_engine(setup.engine.predict([PAIRS[0], *LONG], "ft-twin", truncate=False))
    assert (str(front.value), vars(front.value)) == (str(engine.value), vars(engine.value))


async def test_pairs_go_as_text_without_an_encoder(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(setup.front.encoders, "get", lambda name: None)
    setup.calls.clear()
    front = await setup.front.submit(EngineRequest(PAIRS, "ft-twin"))
    assert setup.calls == [len(PAIRS)]
    assert_same(front, setup.on_engine(setup.engine.predict(PAIRS, "ft-twin")))


async def test_an_outdated_encoder_is_not_trusted(setup: Setup) -> None:
    """Ids from an encoder the variant no longer serves with (say, reloaded since): the engine tokenizes the pairs."""
    short = setup.front.encoders.get("ft-short")
    assert short is not None
    setup.calls.clear()
    encoded = short.encode(PAIRS)
    given = EncodedInputs(encoded.ids, encoded.truncated, short.fingerprint)
    front = setup.on_engine(setup.engine.submit(EngineRequest(PAIRS, "ft-twin", encoded=given)))
    assert setup.calls == [len(PAIRS)]
    assert_same(front, setup.on_engine(setup.engine.predict(PAIRS, "ft-twin")))


async def test_shadows_still_compare(setup: Setup) -> None:
    """ft-twin shares the primary's encoder: its shadow runs the front end's ids; ft-short's shadow is tokenized by
    the engine (its own max_seq_len), the one tokenization the engine still does for an encoded request."""
    before = {candidate: shadow_pairs(primary, candidate) for primary, candidate in SHADOWS}
    setup.calls.clear()
    await setup.front.submit(EngineRequest(PAIRS, "ft-primary"))
    setup.on_engine(setup.engine.wait_shadows())
    assert setup.calls == [len(PAIRS)]  # ft-short's sample only
    for primary, candidate in SHADOWS:
        assert shadow_pairs(primary, candidate) == before[candidate] + len(PAIRS)


def wait_settled(encoders: FrontEncoders) -> None:
    deadline = time.monotonic() + 10
    while not encoders.settled() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert encoders.settled()


def test_the_encoders_follow_the_engine(setup: Setup) -> None:
    """A changed fingerprint in the broadcast (a reload with another tokenizer) retires the encoder; one that loads
    different from the engine's is not used; a variant the engine no longer names loses its encoder."""
    runtime = setup.engine.variants["ft-twin"]
    assert runtime.encoder is not None
    encoders = FrontEncoders()
    try:
        assert encoders.settled()
        encoders.want({"ft-twin": (runtime.spec, runtime.encoder.fingerprint)})
        assert not encoders.settled()
        wait_settled(encoders)
        loaded = encoders.get("ft-twin")
        assert loaded is not None
        assert loaded.fingerprint == runtime.encoder.fingerprint
        encoders.want({"ft-twin": (runtime.spec, "another")})
        assert encoders.get("ft-twin") is None
        wait_settled(encoders)  # loaded again, found different from the engine's: pairs go as text
        assert encoders.get("ft-twin") is None
        encoders.want({})
        assert encoders.get("ft-twin") is None
    finally:
        encoders.close(10)


@pytest.mark.parametrize("encoded", [True, False], ids=["ids", "text"])
async def test_time_spent_in_the_front_end_counts_against_the_deadline(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, encoded: bool
) -> None:
    """The front end (its tokenizer backlog, say) used more than the request's timeout: refused as one process
    refuses a request whose tokenization used its timeout, not given a fresh timeout in the engine process; a timeout
    too short for the variant is still the client's error (422) however little the front end spent."""
    engine, front = setup.engine, setup.front
    counted = engine.tokenization.encode

    async def slow_encode(encoder: PairEncoder, pairs: Sequence[tuple[str, str]], truncate: bool) -> EncodedPairs:
        await asyncio.sleep(0.5)  # one process: tokenizing (its backlog) uses more than the timeout
        return await counted(encoder, pairs, truncate)

    monkeypatch.setattr(engine.tokenization, "encode", slow_encode)
    with pytest.raises(EngineError) as single:
        setup.on_engine(engine.predict(PAIRS[:1], "ft-twin", timeout_s=0.4))
    monkeypatch.setattr(engine.tokenization, "encode", counted)
    assert isinstance(single.value, DeadlineExceededError | OverloadedError)

    real_get = front.encoders.get

    def slow_get(name: str) -> PairEncoder | None:
        time.sleep(0.5)  # stands in for time lost in this front end before the request is sent
        return real_get(name) if encoded else None

    monkeypatch.setattr(front.encoders, "get", slow_get)
    with pytest.raises(EngineError) as multi:
        await front.submit(EngineRequest(PAIRS[:1], "ft-twin", timeout_s=0.4))
    assert (type(multi.value), multi.value.reason) == (type(single.value), single.value.reason)
    monkeypatch.setattr(front.encoders, "get", real_get)
    assert (await front.submit(EngineRequest(PAIRS[:1], "ft-twin", timeout_s=2.0))).variant == "ft-twin"
    with pytest.raises(DeadlineTooShortError):
        await front.submit(EngineRequest(PAIRS[:1], "ft-twin", timeout_s=1e-6))
