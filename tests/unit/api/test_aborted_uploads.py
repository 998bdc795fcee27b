"""Clients that leave mid-body, or are cut off at the body limit, are answered or closed quietly: no ERROR logs."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from starlette.types import Message

from app.logs import TextFormatter

V2_HEAD = b'{"inputs": [{"name": "premise", "shape": [1], "datatype": "BYTES", "data": ["'


async def call(app: Any, path: str, chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> list[Message]:
    """Drive the ASGI app by hand: the body arrives in ``chunks``, then the client disconnects."""
    incoming: list[Message] = [{"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
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
    await app(scope, receive, send)
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
