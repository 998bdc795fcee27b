"""Closing a listening socket without resetting the connections the kernel already took for it.

The kernel completes TCP handshakes for a listening socket by itself and queues the connections (the accept backlog),
with the request bytes their clients send meanwhile. Closing the socket resets every queued connection: a request
taken and never answered, which the client cannot tell from a crash. So the last process holding a listening socket
(the only process in single-process mode, the supervisor with several front ends) closes it in three steps:

1. :func:`refuse_new_connections` attaches a drop-all classic BPF filter: the kernel drops SYNs and the ACKs that
   would complete a handshake, so nothing more joins the queue. A client connecting now gets no answer to its SYN and
   sends it again a second later, when the socket is closed: a refused connection, nothing taken.
2. What is queued is accepted and answered (by the app in a serving process; by :func:`answer_backlog` in the
   supervisor). :func:`queued_connections` tells when the queue is empty.
3. Only then is the socket closed.

Linux only (``SO_ATTACH_FILTER``, ``TCP_INFO``); elsewhere the filter is skipped (False) and the queue length is
unknown (None), and the close is as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import selectors
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>; the socket module does not export it
_BPF_RET_K = 0x06  # BPF_RET | BPF_K: return the constant k, the number of bytes of the packet to keep
_TCP_LISTEN = 10  # tcp_info.tcpi_state of a listening socket
_TCP_INFO_UNACKED = 24  # offset of tcpi_unacked: for a listening socket, the length of its accept queue

# An answer to a queued connection: the head of its request (as much as arrived) -> the whole HTTP response.
Answer = Callable[[bytes], bytes]


def refuse_new_connections(sock: socket.socket | int) -> bool:
    """Attach a filter that drops every packet the listening socket ``sock`` (or file descriptor) receives: no new
    handshake completes, connections already queued stay (they have sockets of their own). False where unsupported.
    The filter acts on the socket, not the descriptor: every process sharing the socket stops getting connections."""
    if sys.platform != "linux":
        return False
    instruction = ctypes.create_string_buffer(struct.pack("HBBI", _BPF_RET_K, 0, 0, 0))  # struct sock_filter
    program = struct.pack("@HP", 1, ctypes.addressof(instruction))  # struct sock_fprog: length, pointer
    fd = sock if isinstance(sock, int) else sock.fileno()
    try:
        with socket.socket(fileno=os.dup(fd)) as same:  # works for any object with a descriptor (uvloop's too)
            same.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, program)
    except OSError as error:
        log.warning("could not stop new connections on the listening socket before closing it: %s", error)
        return False
    return True


def queued_connections(sock: socket.socket | int) -> int | None:
    """Connections the kernel completed for the listening socket ``sock`` that no process has accepted yet; None
    where the kernel does not say (not Linux, not a listening TCP socket)."""
    if sys.platform != "linux":
        return None
    fd = sock if isinstance(sock, int) else sock.fileno()
    try:
        with socket.socket(fileno=os.dup(fd)) as same:
            info = same.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_UNACKED + 4)
    except OSError:
        return None
    if len(info) < _TCP_INFO_UNACKED + 4 or info[0] != _TCP_LISTEN:
        return None
    queued: int = struct.unpack_from("I", info, _TCP_INFO_UNACKED)[0]
    return queued


@dataclass
class _Queued:
    """One accepted connection on its way through: read the head, write the answer, linger until the client
    closes (closing with its bytes unread would reset the connection and could destroy the answer)."""

    sock: socket.socket
    head_deadline: float
    received: bytearray = field(default_factory=bytearray)
    reply: bytes = b""
    linger_deadline: float | None = None


@dataclass(frozen=True)
class BacklogReport:
    answered: int  # connections that got the answer
    incomplete: int  # connections whose request head was not complete in time (answered all the same)
    filtered: bool  # whether new handshakes were stopped first


def answer_backlog(
    listener: socket.socket,
    answer: Answer,
    *,
    max_head_bytes: int = 65_536,
    head_timeout_s: float = 2.0,
    linger_s: float = 1.0,
    deadline_s: float = 10.0,
) -> BacklogReport:
    """The last holder's close of ``listener``: stop new handshakes, accept every queued connection, read its
    request head (at most ``max_head_bytes``, for at most ``head_timeout_s``), send ``answer(head)``, half-close,
    wait (at most ``linger_s``) for the client to close, then close the connection; ``listener`` is closed last.
    Everything ends within ``deadline_s``. Blocking: for a process with nothing else to do (the supervisor)."""
    filtered = refuse_new_connections(listener)
    started = time.monotonic()
    stop_at = started + deadline_s
    listener.setblocking(False)
    pending: dict[int, _Queued] = {}
    answered = incomplete = 0
    with selectors.DefaultSelector() as selector:

        def accept_all() -> None:
            while True:
                try:
                    sock, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as error:  # a connection reset while queued, or out of descriptors: go on
                    if error.errno in (errno.EMFILE, errno.ENFILE):
                        return
                    continue
                sock.setblocking(False)
                pending[sock.fileno()] = _Queued(sock, min(time.monotonic() + head_timeout_s, stop_at))
                selector.register(sock, selectors.EVENT_READ)

        def finish(entry: _Queued) -> None:
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(entry.sock)
            pending.pop(entry.sock.fileno(), None)
            entry.sock.close()

        def reply(entry: _Queued) -> None:
            nonlocal answered
            entry.reply = answer(bytes(entry.received))
            entry.linger_deadline = min(time.monotonic() + linger_s, stop_at)
            send(entry)
            answered += 1

        def send(entry: _Queued) -> None:
            try:
                sent = entry.sock.send(entry.reply)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:  # the client is gone
                finish(entry)
                return
            entry.reply = entry.reply[sent:]
            if entry.reply:
                selector.modify(entry.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
                return
            with contextlib.suppress(OSError):
                entry.sock.shutdown(socket.SHUT_WR)
            selector.modify(entry.sock, selectors.EVENT_READ)

        def readable(entry: _Queued) -> None:
            try:
                data = entry.sock.recv(65_536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                finish(entry)
                return
            if entry.linger_deadline is not None:  # answered: only waiting for the client's close
                if not data:
                    finish(entry)
                return
            if not data:  # the client left before its request was complete: nobody to answer
                finish(entry)
                return
            entry.received += data[: max(0, max_head_bytes - len(entry.received))]
            if b"\r\n\r\n" in entry.received or len(entry.received) >= max_head_bytes:
                reply(entry)

        accept_all()
        while pending and time.monotonic() < stop_at:
            now = time.monotonic()
            for entry in list(pending.values()):
                if entry.linger_deadline is None and now >= entry.head_deadline:
                    incomplete += 1
                    reply(entry)  # a request that never completed is answered all the same
                elif entry.linger_deadline is not None and now >= entry.linger_deadline:
                    finish(entry)
            if not pending:
                break
            wake = min(entry.linger_deadline or entry.head_deadline for entry in pending.values())
            for key, events in selector.select(max(0.0, min(wake, stop_at) - now)):
                ready = pending.get(key.fd)
                if ready is not None and events & selectors.EVENT_WRITE and ready.reply:
                    send(ready)
                if ready is not None and events & selectors.EVENT_READ and key.fd in pending:
                    readable(ready)
            accept_all()  # without the filter (not Linux), what arrived meanwhile
        for entry in list(pending.values()):
            finish(entry)
    listener.close()
    if answered:
        log.info(
            "answered %d connection(s) from the listening socket's queue before closing it (%.2fs)",
            answered,
            time.monotonic() - started,
        )
    return BacklogReport(answered, incomplete, filtered)
