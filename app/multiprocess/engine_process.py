"""The engine process: one ``Engine`` (models, queues, device workers) serving the front ends over ZeroMQ.

Run by the supervisor as ``python -m app.multiprocess.engine_process RUN_DIR``. Admission (429/503) and deadlines happen
here, in the one place that sees the whole load; errors go back typed (see channel). The front ends tokenize: this
process tokenizes only pairs a front end sent without ids (it had no encoder for the variant yet, or an outdated one)
and a shadow sample whose candidate's tokenizer differs from its primary's.
SIGTERM: stop admitting (the supervisor sends it only after the front ends have drained), wait for what was accepted,
stop the workers, exit 0.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from prometheus_client import REGISTRY, generate_latest

from app.engine.engine import Engine
from app.engine.errors import EngineError
from app.engine.scheduler.requests import Priority
from app.engine.status import RepositoryEntry
from app.engine.tokenization import EncodedPairs
from app.multiprocess import channel
from app.multiprocess.supervisor import exit_now
from app.settings import Settings

log = logging.getLogger(__name__)


def _entry(entry: RepositoryEntry) -> list[str]:
    return [entry.name, str(entry.state), entry.reason]


class EngineProcess:
    def __init__(self, engine: Engine, run_dir: Path, drain_timeout_s: float) -> None:
        self.engine = engine
        self.drain_timeout_s = drain_timeout_s
        self.context = zmq.asyncio.Context()
        self.requests = self.context.socket(zmq.ROUTER)
        self.requests.setsockopt(zmq.LINGER, 0)
        self.requests.setsockopt(zmq.SNDHWM, 0)
        self.requests.setsockopt(zmq.RCVHWM, 0)
        self.requests.bind(channel.request_address(run_dir))
        self.state = self.context.socket(zmq.PUB)
        self.state.setsockopt(zmq.LINGER, 0)
        self.state.bind(channel.state_address(run_dir))
        self._calls: dict[tuple[bytes, int], asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self._drain = True
        self._parent = os.getppid()

    def snapshot(self) -> channel.EngineState:
        engine = self.engine
        return channel.EngineState(
            ready=engine.ready,
            live=engine.live,
            draining=engine.draining,
            default_variant=engine.default_variant,
            variants=[
                (
                    runtime.spec.model_dump(mode="json"),
                    runtime.describe(),
                    None if runtime.encoder is None else runtime.encoder.fingerprint,
                )
                for runtime in engine.variants.values()
            ],
        )

    async def publish(self) -> None:
        while not self._stopping.is_set():
            await self.state.send(self.snapshot().encode())
            if os.getppid() != self._parent:
                log.error("the supervisor is gone: the engine process stops")
                self.stop(drain=False)
            await asyncio.sleep(channel.STATE_INTERVAL_S)

    async def _reply(self, identity: bytes, call_id: int, status: int, body: Any) -> None:
        await self.requests.send_multipart([identity, channel.pack([call_id, status, body])])

    async def _predict(self, identity: bytes, call_id: int, kind: str, payload: list[Any]) -> None:
        try:
            if kind == channel.PREDICT_ENCODED:
                pairs, ids, truncated, fingerprint, tokenization_s, variant, truncate, timeout_s, priority, language = (
                    payload
                )
                result = await self.engine.predict_encoded(
                    [(premise, hypothesis) for premise, hypothesis in pairs],
                    EncodedPairs(ids, truncated),
                    fingerprint,
                    variant,
                    truncate,
                    timeout_s,
                    priority=Priority[priority],
                    language=language,
                    tokenization_s=tokenization_s,
                )
            else:
                pairs, variant, truncate, timeout_s, priority, language, spent_s = payload
                result = await self.engine.predict(
                    [(premise, hypothesis) for premise, hypothesis in pairs],
                    variant,
                    truncate,
                    timeout_s,
                    priority=Priority[priority],
                    language=language,
                    spent_s=spent_s,
                )
        except asyncio.CancelledError:
            return  # the front's client hung up: nobody waits for an answer
        except EngineError as error:
            await self._reply(identity, call_id, channel.ENGINE_ERROR, channel.encode_error(error))
        except Exception as error:
            log.exception("prediction failed")
            await self._reply(identity, call_id, channel.FAILED, f"{type(error).__name__}: {error}")
        else:
            await self._reply(identity, call_id, channel.OK, channel.encode_result(result))

    async def _call(self, identity: bytes, call_id: int, payload: list[Any]) -> None:
        method, args, kwargs = payload
        try:
            if method not in channel.CALLS:
                raise ValueError(f"unknown engine call {method!r}")
            body: Any
            if method == "metrics":
                body = generate_latest(REGISTRY)
            elif method == "repository_index":
                body = [_entry(entry) for entry in self.engine.repository_index()]
            elif method == "repository_entry":
                body = _entry(self.engine.repository_entry(*args))
            else:
                function: Callable[..., Any] = getattr(self.engine, method)
                await function(*args, **kwargs)
                body = None
        except asyncio.CancelledError:
            return
        except EngineError as error:
            await self._reply(identity, call_id, channel.ENGINE_ERROR, channel.encode_error(error))
        except Exception as error:
            log.exception("engine call %s failed", method)
            await self._reply(identity, call_id, channel.FAILED, f"{type(error).__name__}: {error}")
        else:
            await self._reply(identity, call_id, channel.OK, body)

    async def receive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            identity, frame = await self.requests.recv_multipart(copy=True)
            kind, call_id, payload = channel.unpack(frame)
            key = (identity, call_id)
            if kind == channel.CANCEL:
                task = self._calls.get(key)
                if task is not None:
                    task.cancel()
                continue
            if kind == channel.CALL:
                task = loop.create_task(self._call(identity, call_id, payload))
            else:
                task = loop.create_task(self._predict(identity, call_id, kind, payload))
            self._calls[key] = task
            # The entry goes when the task ends, however it ends: a task cancelled before it first runs (its CANCEL
            # was already buffered behind it) never reaches its own ``finally``.
            task.add_done_callback(functools.partial(self._forget, key))

    def _forget(self, key: tuple[bytes, int], task: asyncio.Task[None]) -> None:
        if self._calls.get(key) is task:
            del self._calls[key]

    def stop(self, drain: bool) -> None:
        if drain and not self.engine.draining:
            self.engine.begin_drain()
            log.info("SIGTERM: the engine process drains for up to %.1fs", self.drain_timeout_s)
        self._drain = drain
        self._stopping.set()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop, True)
        loop.add_signal_handler(signal.SIGINT, self.stop, False)

        async def load() -> None:
            try:
                await asyncio.to_thread(self.engine.load)
                log.info("all variants ready", extra={"variants": list(self.engine.variants)})
            except Exception as error:
                log.error("loading failed, the service stays unready: %s", error)

        tasks = [loop.create_task(self.publish()), loop.create_task(self.receive()), loop.create_task(load())]
        await self._stopping.wait()
        if self._drain:
            try:
                async with asyncio.timeout(self.drain_timeout_s):
                    await self.engine.wait_idle()
                log.info("engine drained: no request in flight")
            except TimeoutError:
                log.warning("engine drain timeout: %d request(s) still in flight", self.engine.inflight)
        await self.state.send(self.snapshot().encode())
        for task in tasks[:2]:
            task.cancel()
        for task in list(self._calls.values()):
            task.cancel()
        await tasks[2]  # loading finishes its current step (a thread cannot be interrupted)
        await asyncio.to_thread(self.engine.close)
        self.close()

    def close(self) -> None:
        """Close the sockets and the context (a context left to the garbage collector blocks whoever frees it)."""
        self.context.destroy(linger=0)


def main() -> None:
    run_dir = Path(sys.argv[1])
    settings = Settings()
    from app.cli import build_engine
    from app.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    engine = build_engine(settings)
    engine.preflight()  # the supervisor checked the same catalogue; this loads this process's tokenizers
    import uvloop

    uvloop.run(EngineProcess(engine, run_dir, settings.drain_timeout_s).serve())
    exit_now(0)


if __name__ == "__main__":
    main()
