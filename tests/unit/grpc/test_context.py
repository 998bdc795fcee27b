"""The call's context from its metadata: the request id (the client's if sane), the routing key, the credentials."""

from __future__ import annotations

import pytest

from app.grpc.context import call_context
from app.logs import request_id_var


def test_the_clients_request_id_is_kept_and_seen_by_logs() -> None:
    call = call_context([("x-request-id", "abc-123"), ("authorization", "Bearer k"), ("x-routing-key", "user-7")])
    try:
        assert (call.request_id, call.authorization, call.routing_key) == ("abc-123", "Bearer k", "user-7")
        assert request_id_var.get() == "abc-123"
    finally:
        call.close()
    assert request_id_var.get() is None


@pytest.mark.parametrize(
    "metadata",
    [None, [], [("x-request-id", "has spaces")], [("x-request-id", "x" * 129)], [("x-request-id-bin", b"\x00")]],
)
def test_a_missing_or_odd_request_id_is_replaced(metadata: list[tuple[str, str | bytes]] | None) -> None:
    call = call_context(metadata)
    call.close()
    assert len(call.request_id) == 32
    assert call.request_id.isalnum()


def test_a_binary_value_is_not_credentials() -> None:
    call = call_context([("authorization", b"Bearer k")])
    call.close()
    assert call.authorization is None


def test_a_repeated_key_counts_once() -> None:
    call = call_context([("authorization", "Bearer first"), ("authorization", "Bearer second")])
    call.close()
    assert call.authorization == "Bearer first"
