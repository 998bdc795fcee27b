"""The last holder's close of a listening socket (app.api.listener_drain), on real sockets on 127.0.0.1: the filter
stops new handshakes, what was queued is answered, and the socket is closed only then."""

from __future__ import annotations

import select
import socket
import sys
import threading
from collections.abc import Iterator

import pytest

from app.api import listener_drain

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="socket filters and TCP_INFO are Linux's"),
    pytest.mark.sockets,
]

ANSWER = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock
    sock.close()


def connect(listener: socket.socket, request: bytes = b"") -> socket.socket:
    """A client whose handshake the kernel completed (it sits in the listener's queue), having sent ``request``."""
    client = socket.create_connection(listener.getsockname(), timeout=5)
    if request:
        client.sendall(request)
    return client


def connects(listener: socket.socket, wait_s: float) -> bool:
    """Whether a new connection to ``listener`` completes within ``wait_s``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
        client.setblocking(False)
        client.connect_ex(listener.getsockname())
        _, writable, _ = select.select([], [client], [], wait_s)
        return bool(writable) and client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


def read_all(client: socket.socket) -> bytes:
    received = b""
    while chunk := client.recv(4096):
        received += chunk
    return received


def wait_queued(listener: socket.socket, count: int) -> None:
    """Loopback handshakes complete at once, but give a loaded machine a moment."""
    for _ in range(500):
        if listener_drain.queued_connections(listener) == count:
            return
        select.select([], [], [], 0.01)
    raise AssertionError(f"{listener_drain.queued_connections(listener)} queued, expected {count}")


def test_the_filter_stops_new_handshakes_and_keeps_the_queue(listener: socket.socket) -> None:
    assert listener_drain.queued_connections(listener) == 0
    queued = connect(listener, b"GET / HTTP/1.1\r\n\r\n")
    wait_queued(listener, 1)
    assert listener_drain.refuse_new_connections(listener)
    assert not connects(listener, 0.3)  # its SYN is dropped: no handshake completes
    assert listener_drain.queued_connections(listener) == 1  # ... and the late one did not join the queue
    accepted, _ = listener.accept()
    with accepted, queued:
        assert listener_drain.queued_connections(listener) == 0
        assert accepted.recv(100) == b"GET / HTTP/1.1\r\n\r\n"  # what was queued kept its bytes and works
        accepted.sendall(b"ok")
        assert queued.recv(10) == b"ok"


def test_answer_backlog_answers_every_queued_connection_then_closes(listener: socket.socket) -> None:
    address = listener.getsockname()
    body = b'{"premise": "a", "hypothesis": "b"}'
    post = b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    clients = {
        "get": connect(listener, b"GET /health/ready HTTP/1.1\r\nhost: x\r\n\r\n"),
        "post": connect(listener, post),  # a body behind the head: read away, not left to reset the connection
        "split": connect(listener, b"GET /v2 HTTP/1.1\r\n"),  # the rest of its head comes later
        "silent": connect(listener),  # never sends: answered when its head timeout passes
    }
    wait_queued(listener, len(clients))
    heads: list[bytes] = []

    def answer(head: bytes) -> bytes:
        heads.append(head)
        return ANSWER

    reports: list[listener_drain.BacklogReport] = []
    closing = threading.Thread(
        target=lambda: reports.append(listener_drain.answer_backlog(listener, answer, head_timeout_s=1.0, linger_s=5))
    )
    closing.start()
    clients["split"].sendall(b"host: x\r\n\r\n")
    answers = {name: read_all(client) for name, client in clients.items()}
    for client in clients.values():
        client.close()  # the supervisor lingers for this close before closing its side
    closing.join(timeout=10)
    assert not closing.is_alive()

    assert answers == dict.fromkeys(clients, ANSWER)
    assert sorted(heads) == sorted(
        [
            b"GET /health/ready HTTP/1.1\r\nhost: x\r\n\r\n",
            post,
            b"GET /v2 HTTP/1.1\r\nhost: x\r\n\r\n",
            b"",
        ]
    )
    assert reports == [listener_drain.BacklogReport(answered=4, incomplete=1, filtered=True)]
    assert listener.fileno() == -1  # closed, last
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()


def test_answer_backlog_of_an_empty_queue_just_closes(listener: socket.socket) -> None:
    report = listener_drain.answer_backlog(listener, lambda head: ANSWER)
    assert report == listener_drain.BacklogReport(answered=0, incomplete=0, filtered=True)
    assert listener.fileno() == -1


def test_queued_connections_of_a_socket_that_does_not_listen() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert listener_drain.queued_connections(sock) is None
