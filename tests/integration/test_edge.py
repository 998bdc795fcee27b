"""The HTTP edge against clients that misbehave at the socket level (app.api.edge), on a real server: silent, dripping
and stalled connections are closed on time while real requests keep being served; oversized headers are refused
without being buffered; a descriptor limit cannot be exhausted by idle connections; a full house answers 503."""

from __future__ import annotations

import contextlib
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app import local_server
from app.api import edge
from tests.support.helpers import ServerProcess, metric_value, running_server, write_catalogue

pytestmark = pytest.mark.integration

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
WRITE_TIMEOUT_S = 1.0
EDGE_ENV = {
    "XNLI_SERVE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "XNLI_SERVE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    "XNLI_SERVE_WRITE_TIMEOUT_S": str(WRITE_TIMEOUT_S),
    "XNLI_SERVE_KEEP_ALIVE_S": "5",
    "XNLI_SERVE_ENABLE_FAULT_INJECTION": "true",
}
JSON = {"content-type": "application/json"}
PREDICT = b'{"premise": "Der Hund schlaeft.", "hypothesis": "Ein Tier ruht."}'


@pytest.fixture(scope="module")
def edge_catalogue(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_catalogue(
        tmp_path_factory.mktemp("edge") / "variants.toml",
        demo_store,
        [
            {"name": "xlmr-mnli", "checkpoint": "xlmr-mnli"},
            {"name": "sleepy", "checkpoint": "xlmr-mnli", "max_batch_size": 1, "faults": {"delay_ms": 1500}},
        ],
        max_batch_size=8,
        max_seq_len=128,
    )


@pytest.fixture(scope="module")
def edge_server(edge_catalogue: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(edge_catalogue, tmp_path_factory.mktemp("edge-logs"), extra_env=EDGE_ENV) as server:
        yield server


def address(server: ServerProcess) -> tuple[str, int]:
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def closed_after(sock: socket.socket, started: float, limit_s: float) -> float | None:
    """Seconds from ``started`` until the server closed ``sock`` (EOF or reset), reading whatever it answered; None
    if it still stood open ``limit_s`` after ``started``."""
    while (left := started + limit_s - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return time.monotonic() - started
        except TimeoutError:
            return None
        except OSError:
            return time.monotonic() - started
    return None


def predict_latency(server: ServerProcess) -> float:
    started = time.perf_counter()
    answer = httpx.post(f"{server.base_url}/predict", content=PREDICT, headers=JSON, timeout=10)
    assert answer.status_code == 200, answer.text
    return time.perf_counter() - started


@pytest.mark.slow  # a long end-to-end run: make test-slow
def test_silent_dripping_and_stalled_connections_are_closed_while_real_requests_are_served(
    edge_server: ServerProcess,
) -> None:
    """The audit's 1,000-connection attack, scaled down (60 silent, 20 sending a header line every 0.5 s, 20 stalled
    mid-body): every one closed within its timeout + 2 s; real requests keep their usual latency meanwhile."""
    usual = min(predict_latency(edge_server) for _ in range(5))
    before = httpx.get(f"{edge_server.base_url}/metrics").text
    started = time.monotonic()
    silent = [socket.create_connection(address(edge_server)) for _ in range(60)]
    dripping = [socket.create_connection(address(edge_server)) for _ in range(20)]
    stalled = [socket.create_connection(address(edge_server)) for _ in range(20)]
    for sock in dripping:
        sock.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\n")
    for sock in stalled:
        sock.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 64\r\n\r\n{")
    stop = threading.Event()

    def drip() -> None:
        while not stop.wait(0.5):
            for sock in dripping:
                with contextlib.suppress(OSError):
                    sock.sendall(b"x-drip: 1\r\n")

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    during = [predict_latency(edge_server) for _ in range(10)]
    limit = max(HEADER_TIMEOUT_S, BODY_TIMEOUT_S) + 2.0
    closed = [closed_after(sock, started, limit) for sock in silent + dripping + stalled]
    stop.set()
    dripper.join()
    for sock in silent + dripping + stalled:
        sock.close()
    times = [seconds for seconds in closed if seconds is not None]
    assert len(times) == len(closed), f"{len(closed) - len(times)} of {len(closed)} connections open after {limit} s"
    assert min(times) >= HEADER_TIMEOUT_S - 0.5  # closed for their timeout, not at random
    assert sorted(during)[len(during) // 2] < max(10 * usual, 0.5), (usual, during)
    after = httpx.get(f"{edge_server.base_url}/metrics").text
    for reason, count in [("header_timeout", 80), ("body_timeout", 20)]:
        delta = metric_value(after, "xnli_http_connections_closed_total", reason=reason) - metric_value(
            before, "xnli_http_connections_closed_total", reason=reason
        )
        assert delta == count, (reason, delta)


def closed_count(server: ServerProcess, reason: str) -> float:
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    return metric_value(metrics, "xnli_http_connections_closed_total", reason=reason)


def read_answers(sock: socket.socket, limit_s: float, until: int | None = None) -> tuple[list[bytes], bool]:
    """The status lines the server sent on ``sock`` (within ``limit_s``, or until ``until`` came) and whether it
    closed it."""
    received = b""
    deadline = time.monotonic() + limit_s
    closed = False
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        received += chunk
        if until is not None and len(re.findall(rb"HTTP/1\.1 \d{3} ", received)) >= until:
            break
    return re.findall(rb"HTTP/1\.1 \d{3} [^\r]*", received), closed  # a body has no line end before the next


EARLY = b"POST /no-such-route HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"


def test_a_body_sent_after_an_early_answer_is_read_as_body(edge_server: ServerProcess) -> None:
    """A 404 goes out before the body is read and keeps the connection; the body that follows is discarded as body
    (it was counted as the next request's headers: a stray 431 or 408), and the next request is served."""
    with socket.create_connection(address(edge_server)) as sock:
        sock.sendall(EARLY % 500_000)
        time.sleep(0.3)  # the answer goes out with the body unread
        sock.sendall(b"x" * 500_000)
        sock.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n")
        sock.sendall(b"content-length: %d\r\n\r\n" % len(PREDICT) + PREDICT)
        statuses, closed = read_answers(sock, 5, until=2)
    assert [status.split(b" ")[1] for status in statuses] == [b"404", b"200"], (statuses, closed)


def test_a_body_crawling_after_an_early_answer_is_still_timed_out(edge_server: ServerProcess) -> None:
    """The body deadline lasts until the body ends, answered or not: a client cannot hold the connection by dripping
    the rest of a body it was already answered for."""
    before = closed_count(edge_server, "body_timeout")
    with socket.create_connection(address(edge_server)) as sock:
        sock.sendall(EARLY % 900_000)  # under the body limit (a 413 closes the connection itself)
        started = time.monotonic()
        stop = threading.Event()

        def drip() -> None:
            while not stop.wait(0.25):
                with contextlib.suppress(OSError):
                    sock.sendall(b"x")

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        try:
            statuses, closed = read_answers(sock, BODY_TIMEOUT_S + 3.0)
        finally:
            stop.set()
            dripper.join()
    assert [status.split(b" ")[1] for status in statuses] == [b"404"], statuses
    assert closed, f"still open {time.monotonic() - started:.1f} s after the answer"
    assert closed_count(edge_server, "body_timeout") == before + 1


def test_pipelined_requests_beyond_the_bound_are_not_read(edge_server: ServerProcess) -> None:
    """40 pipelined requests in one write: the one in progress and the 16 parked behind it are answered, then the
    connection closes; the rest were never read (a pipelining client retries them)."""
    before = closed_count(edge_server, "pipeline_limit")
    with socket.create_connection(address(edge_server)) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n" * 40)
        statuses, closed = read_answers(sock, 5)
    assert statuses == [b"HTTP/1.1 200 OK"] * (edge.MAX_PIPELINED + 1)
    assert closed
    assert closed_count(edge_server, "pipeline_limit") == before + 1


def test_a_client_that_stops_reading_loses_its_connection(edge_server: ServerProcess) -> None:
    """Large answers requested in pipelined rounds and never read: once the send buffers are full, the connection
    is reset after the write timeout, and the slot it held serves others."""
    before = closed_count(edge_server, "write_timeout")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(address(edge_server))
    sock.settimeout(0.5)
    started = time.monotonic()
    with sock:
        while time.monotonic() - started < 30 and closed_count(edge_server, "write_timeout") == before:
            with contextlib.suppress(TimeoutError, OSError):
                sock.sendall(b"GET /openapi.json HTTP/1.1\r\nhost: x\r\n\r\n" * edge.MAX_PIPELINED)
            time.sleep(0.2)
    assert closed_count(edge_server, "write_timeout") == before + 1
    assert predict_latency(edge_server) < 5


def test_a_silent_connection_gets_408_in_the_native_error_shape(edge_server: ServerProcess) -> None:
    with socket.create_connection(address(edge_server)) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\n")
        sock.settimeout(HEADER_TIMEOUT_S + 5)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in head.lower()
    assert b'"type":"request_timeout"' in body


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(b"x-big: " + b"a" * (1 << 20) + b"\r\n", id="one-1MB-header"),
        pytest.param(b"x-big: " + b"a" * (8 << 20) + b"\r\n", id="one-8MB-header"),
        pytest.param(b"".join(b"x-h%d: v\r\n" % n for n in range(20_000)), id="20000-headers"),
    ],
)
def test_oversized_headers_get_431(edge_server: ServerProcess, headers: bytes) -> None:
    with socket.create_connection(address(edge_server)) as sock:
        # The server may close before it took everything: what it answered is still there to read.
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /health/live HTTP/1.1\r\nhost: x\r\n" + headers + b"\r\n")
        sock.settimeout(10)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def test_headers_under_the_limit_are_served(edge_server: ServerProcess) -> None:
    answer = httpx.get(f"{edge_server.base_url}/health/live", headers={"x-big": "a" * 60_000})
    assert answer.status_code == 200


def test_unterminated_headers_cannot_grow_memory(edge_server: ServerProcess) -> None:
    """4 connections streaming an endless header value (the audit's 4 x 100 MB, cut off by the server long before):
    the server's memory grows by at most 50 MB, and every connection is closed."""
    pid = edge_server.process.pid
    before = rss_bytes(pid)
    chunk = b"a" * 65536
    outcomes: list[int] = []

    def attack() -> None:
        sent = 0
        with socket.create_connection(address(edge_server)) as sock:
            sock.settimeout(5)
            try:
                sock.sendall(b"GET /health/live HTTP/1.1\r\nhost: x\r\nx-endless: ")
                while sent < 100 << 20:
                    sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass
        outcomes.append(sent)

    threads = [threading.Thread(target=attack) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(outcomes) == 4
    assert max(outcomes) < 100 << 20, outcomes  # cut off, not read to the end
    assert rss_bytes(pid) - before < 50 << 20


@pytest.mark.slow  # a long end-to-end run: make test-slow
def test_a_full_house_answers_503_at_once(edge_catalogue: Path, tmp_path: Path) -> None:
    """At the connection cap with every connection carrying a request, a newcomer gets 503 and Retry-After at once
    (never a hang); once a request finishes, new connections are served again."""
    env = {**EDGE_ENV, "XNLI_SERVE_MAX_CONNECTIONS": "3"}
    with running_server(edge_catalogue, tmp_path, extra_env=env) as server:
        body = b'{"premise": "a", "hypothesis": "b", "variant": "sleepy"}'
        request = b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        busy = [socket.create_connection(address(server)) for _ in range(3)]
        for sock in busy:
            sock.sendall(request % len(body) + body)
        time.sleep(0.3)
        started = time.perf_counter()
        answer = httpx.get(f"{server.base_url}/health/live", timeout=5)
        assert time.perf_counter() - started < 1.0
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.json()["error"]["type"] == "overloaded"
        for sock in busy:
            sock.settimeout(30)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            sock.close()
        assert httpx.get(f"{server.base_url}/health/live", timeout=5).status_code == 200


def limited_descriptors(limit: int) -> object:
    start = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit})); "
        "os.execv(sys.executable, [sys.executable, '-m', 'app', *sys.argv[1:]])"
    )

    def command(*args: str) -> list[str]:
        return [sys.executable, "-c", start, *args]

    return command


@pytest.mark.slow  # a long end-to-end run: make test-slow
def test_idle_connections_cannot_exhaust_descriptors(
    edge_catalogue: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Descriptor limit 400 (cap 272) and 350 idle connections held open: those beyond the cap get 503 at once, and
    real requests are still answered, by closing the connection that waited longest with no request."""
    monkeypatch.setattr(local_server, "server_command", limited_descriptors(400))
    env = {**EDGE_ENV, "XNLI_SERVE_HEADER_TIMEOUT_S": "60"}
    with running_server(edge_catalogue, tmp_path, extra_env=env) as server:
        idle = [socket.create_connection(address(server)) for _ in range(350)]
        time.sleep(1.5)  # past the grace a new connection has before it may be evicted (its request may be unread)
        try:
            statuses = []
            for _ in range(5):
                answer = httpx.post(f"{server.base_url}/predict", content=PREDICT, headers=JSON, timeout=10)
                statuses.append(answer.status_code)
            assert statuses == [200] * 5
            metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
            evicted = metric_value(metrics, "xnli_http_connections_closed_total", reason="evicted")
            refused = metric_value(metrics, "xnli_http_connections_closed_total", reason="over_capacity")
            assert evicted >= 1  # the real requests' connections took the place of idle ones
            assert evicted + refused >= 350 - 272  # the idle ones beyond the cap arrived within the grace: 503
        finally:
            for sock in idle:
                sock.close()


@pytest.mark.slow  # a long end-to-end run: make test-slow
def test_requests_beyond_the_inflight_limit_are_shed_before_routing(edge_catalogue: Path, tmp_path: Path) -> None:
    """With every slot busy, a request gets 429 and Retry-After at once, on a connection that stays usable; health
    probes and /metrics are never shed; the shed request is counted as overloaded."""
    env = {**EDGE_ENV, "XNLI_SERVE_MAX_INFLIGHT_REQUESTS": "2"}
    with running_server(edge_catalogue, tmp_path, extra_env=env) as server:
        body = b'{"premise": "a", "hypothesis": "b", "variant": "sleepy"}'
        request = b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        busy = [socket.create_connection(address(server)) for _ in range(2)]
        for sock in busy:
            sock.sendall(request % len(body) + body)
        time.sleep(0.3)
        with httpx.Client(base_url=server.base_url, timeout=5) as http:
            before = http.get("/metrics").text
            started = time.perf_counter()
            shed = [http.post("/predict", content=PREDICT, headers=JSON) for _ in range(3)]
            assert time.perf_counter() - started < 1.0
            assert [answer.status_code for answer in shed] == [429] * 3
            assert shed[0].headers["retry-after"] == "1"
            assert shed[0].json()["error"]["type"] == "overloaded"
            assert http.get("/health/ready").status_code == 200
            after = http.get("/metrics").text
        counted = metric_value(after, "xnli_requests_total", variant="_unknown", outcome="overloaded")
        assert counted - metric_value(before, "xnli_requests_total", variant="_unknown", outcome="overloaded") == 3
        for sock in busy:
            sock.settimeout(30)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            sock.close()
