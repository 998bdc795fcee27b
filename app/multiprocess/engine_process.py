"""The engine process: one ``Engine`` (models, queues, device workers) serving the front ends over ZeroMQ.

Run by the supervisor as ``python -m app.multiprocess.engine_process RUN_DIR``. Admission (429/503) and deadlines happen
here, in the one place that sees the whole load. Requests and answers are the engine's own contract (``Engine.submit``:
an EngineRequest in, an EngineResult or a typed EngineError out), framed by :mod:`app.multiprocess.channel`. The front
ends tokenize: this process tokenizes only pairs a front end sent without ids (it had no encoder for the variant yet,
or an outdated one) and a shadow sample whose candidate's tokenizer differs from its primary's.
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
from pathlib import Path

import zmq
import zmq.asyncio
from opentelemetry import context as otel_context
from prometheus_client import REGISTRY
from prometheus_client.openmetrics.exposition import generate_latest  # issue #27: OpenMetrics keeps exemplars

from app import tracing
from app.engine.engine import Engine
from app.engine.errors import EngineError
from app.logs import request_id_var
from app.multiprocess import channel
from app.multiprocess.supervisor import exit_now
from app.settings import Settings
from app.tracing import propagation

log = logging.getLogger(__name__)


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
        self._refusals: set[str] = set()  # what was logged of frames refused

    def snapshot(self) -> channel.EngineState:
        engine = self.engine
        return channel.EngineState(
            ready=engine.ready,
            live=engine.live,
            draining=engine.draining,
            default_variant=engine.default_variant,
            variants=[
                channel.VariantState(
                    spec=runtime.spec.model_dump(mode="json"),
                    status=runtime.status,
                    error=runtime.error,
                    description=runtime.describe(),
                    fingerprint=None if runtime.encoder is None else runtime.encoder.fingerprint,
                )
                for runtime in engine.variants.values()
            ],
        )

    async def publish(self) -> None:
        while not self._stopping.is_set():
            await self.state.send(channel.encode(self.snapshot()))
            if os.getppid() != self._parent:
                log.error("the supervisor is gone: the engine process stops")
                self.stop(drain=False)
            await asyncio.sleep(channel.STATE_INTERVAL_S)

    async def _reply(self, identity: bytes, reply: channel.Reply) -> None:
        await self.requests.send_multipart([identity, channel.encode(reply)])

    async def _submit(self, identity: bytes, message: channel.SubmitMessage) -> None:
        call_id, request = message.call_id, message.request
        if request.request_id is not None:
            request_id_var.set(request.request_id)  # this task's own context: its log lines carry the HTTP request's id
        if request.trace_context is not None and tracing.STATE.active:
            # Tracing (issue #27): the front end's span is the parent of this task's spans: one trace across processes.
            otel_context.attach(propagation.extract(request.trace_context))
        reply: channel.Reply
        try:
            reply = channel.ResultReply(call_id, await self.engine.submit(request))
        except asyncio.CancelledError:
            return  # the front's client hung up: nobody waits for an answer
        except EngineError as error:
            reply = channel.ErrorReply.of(call_id, error)
        except Exception as error:
            log.exception("prediction failed")
            reply = channel.FailedReply(call_id, f"{type(error).__name__}: {error}")
        await self._reply(identity, reply)

    async def _call(self, identity: bytes, message: channel.CallMessage) -> None:
        call_id, method, name = message.call_id, message.method, message.name
        engine = self.engine
        reply: channel.Reply
        try:
            if method is channel.EngineCall.METRICS:
                # OpenMetrics (issue #27): the only exposition that keeps exemplars (queue-wait trace ids).
                reply = channel.MetricsReply(call_id, generate_latest(REGISTRY))  # type: ignore[no-untyped-call]
            elif method is channel.EngineCall.REPOSITORY_INDEX:
                reply = channel.RepositoryReply(call_id, engine.repository_index())
            elif name is None:
                raise ValueError(f"engine call {method} names no variant")
            elif method is channel.EngineCall.REPOSITORY_ENTRY:
                reply = channel.RepositoryReply(call_id, [engine.repository_entry(name)])
            elif method is channel.EngineCall.LOAD_VARIANT:
                await engine.load_variant(name, min_queue_pairs=message.min_queue_pairs)
                reply = channel.DoneReply(call_id)
            else:
                await engine.unload_variant(name)
                reply = channel.DoneReply(call_id)
        except asyncio.CancelledError:
            return
        except EngineError as error:
            reply = channel.ErrorReply.of(call_id, error)
        except Exception as error:
            log.exception("engine call %s failed", method)
            reply = channel.FailedReply(call_id, f"{type(error).__name__}: {error}")
        await self._reply(identity, reply)

    async def receive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            identity, frame = await self.requests.recv_multipart(copy=True)
            try:
                message = channel.decode_request(frame)
            except channel.ProtocolError as error:
                self._refuse(error)
                continue
            key = (identity, message.call_id)
            task: asyncio.Task[None]
            if isinstance(message, channel.CancelMessage):
                running = self._calls.get(key)
                if running is not None:
                    running.cancel()
                continue
            if isinstance(message, channel.CallMessage):
                task = loop.create_task(self._call(identity, message))
            else:
                task = loop.create_task(self._submit(identity, message))
            self._calls[key] = task
            # The entry goes when the task ends, however it ends: a task cancelled before it first runs (its CANCEL
            # was already buffered behind it) never reaches its own ``finally``.
            task.add_done_callback(functools.partial(self._forget, key))

    def _refuse(self, error: channel.ProtocolError) -> None:
        """A frame this process cannot read (a front end of another version): dropped, logged once per kind of
        error. Such a front end never hears a broadcast it can read either, so it stays unready."""
        if str(error) not in self._refusals:
            self._refusals.add(str(error))
            log.error("a frame from a front end was refused: %s", error)

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
        await self.state.send(channel.encode(self.snapshot()))
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
    from app.tracing.setup import configure, shutdown  # tracing (issue #27)

    configure(role="engine")  # a bad OTEL_* value already stopped the supervisor's front ends' start
    engine.preflight()  # the supervisor checked the same catalogue; this loads this process's tokenizers
    import uvloop

    uvloop.run(EngineProcess(engine, run_dir, settings.drain_timeout_s).serve())
    shutdown()  # tracing (issue #27): queued spans leave, within a bounded wait
    exit_now(0)


if __name__ == "__main__":
    main()
