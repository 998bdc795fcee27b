"""Clients that leave mid-body, or are cut off at the body limit, are answered or closed quietly: no ERROR logs."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from starlette.types import Message

from app.logs import TextFormatter

V2_HEAD = b'{"inputs": [{"name": "premise", "shape": [1], "datatype": "BYTES", "data": ["'


def post_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def call(app: Any, path: str, chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> list[Message]:
    """Drive the ASGI app by hand: the body arrives in ``chunks``, then the client disconnects."""
    incoming: list[Message] = [{"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(post_scope(path, headers), receive, send)
    return sent


@pytest.mark.parametrize(
    ("path", "chunks", "headers", "status"),
    [
        # FastAPI answers a body it could not read with 400, sent to nobody; no error is logged.
        ("/predict", [b'{"premise": "Il ple'], [(b"content-length", b"400")], 400),
        ("/v2/models/xlmr-mnli/infer", [V2_HEAD], [(b"content-length", b"400")], None),
        ("/v2/models/xlmr-mnli/infer", [V2_HEAD, b"a" * 700_000, b"a" * 700_000], [], 413),
        ("/variants/xlmr-mnli/predict", [b"{", b"a" * 700_000, b"a" * 700_000], [], 413),
    ],
    ids=["predict-mid-body", "v2-mid-body", "v2-chunked-over-limit", "variant-predict-chunked-over-limit"],
)
async def test_no_error_log_when_the_client_leaves(
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    path: str,
    chunks: list[bytes],
    headers: list[tuple[bytes, bytes]],
    status: int | None,
) -> None:
    app = client._transport.app  # type: ignore[attr-defined]
    with caplog.at_level(logging.INFO):
        sent = await call(app, path, chunks, headers)
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []
    starts = [message["status"] for message in sent if message["type"] == "http.response.start"]
    assert starts == ([status] if status else [])


def test_text_log_lines_cannot_be_forged() -> None:
    record = logging.LogRecord(
        "xnli_serve.access", logging.INFO, "", 0, "%s %s %d", ("GET", "/x\nFAKE ERROR\r", 404), None
    )
    line = TextFormatter().format(record)
    assert "\n" not in line
    assert "\r" not in line
    assert line.endswith("GET /x\\nFAKE ERROR\\r 404")


CHUNK = 64 * 1024
LIMIT = 1_048_576


@pytest.mark.parametrize("path", ["/predict", "/variants/xlmr-mnli/predict", "/v2/models/xlmr-mnli/infer"])
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_body_over_the_limit_is_not_read_past_it(client: httpx.AsyncClient, path: str, declared: bool) -> None:
    """413 on every body-taking route, and the service stops reading at the limit (a client could send gigabytes)."""
    app = client._transport.app  # type: ignore[attr-defined]
    total = 40 * CHUNK  # 2.5 MiB
    delivered = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal delivered
        delivered += CHUNK
        return {"type": "http.request", "body": b"a" * CHUNK, "more_body": delivered < total}

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(b"content-length", str(total).encode())] if declared else []
    await app(post_scope(path, headers), receive, send)
    assert [message["status"] for message in sent if message["type"] == "http.response.start"] == [413]
    assert delivered <= (0 if declared else LIMIT + CHUNK), delivered
