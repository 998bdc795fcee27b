"""The connection cap's arithmetic (the edge's behaviour on sockets is tested in tests/integration/test_edge.py)."""

from __future__ import annotations

import resource

import pytest

from app.api.edge import DESCRIPTOR_RESERVE, connection_cap


@pytest.mark.parametrize(
    ("configured", "descriptors", "expected"),
    [
        (1024, 20_000, 1024),  # plenty of descriptors: the setting
        (1024, 1100, 1100 - DESCRIPTOR_RESERVE),  # the audit's limit: kept below it
        (1024, 100, 1),  # absurdly low limit: still one connection
        (1024, resource.RLIM_INFINITY, 1024),
    ],
)
def test_connection_cap_stays_below_the_descriptor_limit(configured: int, descriptors: int, expected: int) -> None:
    assert connection_cap(configured, descriptors) == expected
