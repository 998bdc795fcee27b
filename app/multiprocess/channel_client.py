"""A front end's end of the channel (:mod:`app.multiprocess.channel`): the engine's state broadcast, heard in a thread,
and calls to the engine process, awaited on the event loop (predictions, repository changes) or blocking (for the
API's synchronous methods, run off the event loop by the routes).

Silence from the engine for ``silence_s`` (``XNLI_SERVE_ENGINE_SILENCE_S``) makes the channel disconnected: what
waits on it fails (503 for predictions, whose variant is known; :class:`EngineUnavailableError` for other calls).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from app.engine.errors import DeadlineExceededError, EngineError, VariantNotReadyError
from app.multiprocess import channel

log = logging.getLogger(__name__)

SYNC_CALL_TIMEOUT_S = 10.0


class EngineUnavailableError(EngineError):
    """The engine process failed a call for a reason that is not one of its typed errors, or is gone (500)."""


class EngineChannel:
    """Sockets to the engine process; ``on_state`` is called (in the listener thread) with each broadcast."""

    def __init__(
        self, run_dir: Path, on_state: Callable[[channel.EngineState], None], silence_s: float = channel.STALE_AFTER_S
    ) -> None:
        self.run_dir = run_dir
        self.silence_s = silence_s
        self.on_state = on_state
        self.heard = False
        self._heard_at = 0.0
        self._closed = threading.Event()
        self._ids = itertools.count()
        self._pending: dict[int, tuple[asyncio.Future[channel.Reply], str | None]] = {}
        self._socket: zmq.asyncio.Socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._async_context = zmq.asyncio.Context()
        self._sync_context = zmq.Context()
        self._sync_socket = self._dealer(self._sync_context)
        self._sync_lock = threading.Lock()
        self._parent = os.getppid()
        self._refused = False  # a frame was refused (logged once)
        self._listener = threading.Thread(target=self._listen, name="engine-state", daemon=True)
        self._listener.start()

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
                try:
                    state = channel.decode_state(frame)
                except channel.ProtocolError as error:
                    self._refuse(error)  # an engine of another version: never heard, so this front stays unready
                    continue
                self.on_state(state)
                self.heard = True
                self._heard_at = time.monotonic()
        finally:
            subscriber.close()

    def _refuse(self, error: channel.ProtocolError) -> None:
        if not self._refused:
            self._refused = True
            log.error("the engine process speaks another protocol; its frames are refused: %s", error)

    @property
    def connected(self) -> bool:
        """The engine process was heard from within ``silence_s``."""
        return self.heard and time.monotonic() - self._heard_at < self.silence_s

    def _start(self) -> zmq.asyncio.Socket:
        if self._socket is None:
            self._socket = self._dealer(self._async_context)
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._receive()), loop.create_task(self._watch())]
        return self._socket

    async def _receive(self) -> None:
        assert self._socket is not None
        while True:
            frame = await self._socket.recv()
            try:
                reply = channel.decode_reply(frame)
            except channel.ProtocolError as error:
                self._refuse(error)
                continue
            waiting = self._pending.get(reply.call_id)
            if waiting is not None and not waiting[0].done():
                waiting[0].set_result(reply)

    async def _watch(self) -> None:
        """Fail what waits on an engine process that fell silent (503 for predictions)."""
        while True:
            await asyncio.sleep(self.silence_s / 4)
            if self._pending and not self.connected:
                log.error("the engine process is silent: failing %d waiting call(s)", len(self._pending))
                for future, variant in list(self._pending.values()):
                    if not future.done():
                        future.set_exception(
                            VariantNotReadyError(variant, "engine process unavailable")
                            if variant is not None
                            else EngineUnavailableError("the engine process is unavailable")
                        )

    def next_call_id(self) -> int:
        """A call id no other request of this front end uses."""
        return next(self._ids)

    async def request(
        self, message: channel.SubmitMessage | channel.CallMessage, variant: str | None, timeout_s: float | None
    ) -> channel.Reply:
        """Send one request and await its answer (an EngineError raised as the engine raised it); ``variant``: the
        prediction's (its 503 if the engine falls silent)."""
        socket = self._start()
        call_id = message.call_id
        future: asyncio.Future[channel.Reply] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = (future, variant)
        try:
            await socket.send(channel.encode(message))
            async with asyncio.timeout(timeout_s):
                reply = await future
        except (asyncio.CancelledError, TimeoutError) as stopped:
            # The client hung up (or the answer is long overdue): the engine drops the request's queued pairs.
            socket.send(channel.encode(channel.CancelMessage(call_id)))
            if isinstance(stopped, TimeoutError):
                raise DeadlineExceededError("no answer from the engine process within the request's deadline") from None
            raise
        finally:
            del self._pending[call_id]
        return _answer(reply)

    def call_sync(self, method: channel.EngineCall, name: str | None = None) -> channel.Reply:
        """A blocking call (for the API's synchronous methods: repository index, metrics); never on the event loop."""
        if not self.connected:
            raise EngineUnavailableError("the engine process is unavailable")
        with self._sync_lock:
            call_id = next(self._ids)
            self._sync_socket.send(channel.encode(channel.CallMessage(call_id, method, name)))
            deadline = time.monotonic() + SYNC_CALL_TIMEOUT_S
            while (left := deadline - time.monotonic()) > 0:
                if self._sync_socket.poll(int(left * 1000) + 1):
                    try:
                        reply = channel.decode_reply(self._sync_socket.recv())
                    except channel.ProtocolError as error:
                        self._refuse(error)
                        continue
                    if reply.call_id == call_id:
                        return _answer(reply)
        raise EngineUnavailableError(f"the engine process did not answer {method} within {SYNC_CALL_TIMEOUT_S}s")

    def close(self, timeout: float | None = 30.0) -> None:
        self._closed.set()
        for task in self._tasks:
            task.cancel()
        self._listener.join(timeout)
        if self._socket is not None:
            self._socket.close()
        self._sync_socket.close()
        self._async_context.term()
        self._sync_context.term()


def _answer(reply: channel.Reply) -> channel.Reply:
    """The reply, unless it reports a failure: an ErrorReply is raised as the EngineError it carries, a FailedReply
    as EngineUnavailableError (the API's 500)."""
    if isinstance(reply, channel.ErrorReply):
        raise reply.rebuild()
    if isinstance(reply, channel.FailedReply):
        raise EngineUnavailableError(reply.message)
    return reply
