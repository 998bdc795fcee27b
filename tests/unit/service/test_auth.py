"""The API-key check both transports share (app.service.auth)."""

from __future__ import annotations

import pytest

from app.service.auth import ApiKeys

KEYS = ApiKeys(["first-key-0123456789", "second-key-abcdefghij"])


@pytest.mark.parametrize(
    ("credentials", "expected"),
    [
        ("Bearer first-key-0123456789", True),
        ("bearer second-key-abcdefghij", True),
        ("Bearer  first-key-0123456789 ", True),
        ("Bearer wrong-key-0123456789", False),
        ("Basic first-key-0123456789", False),
        ("Bearer ", False),
        ("first-key-0123456789", False),
        (None, False),
    ],
)
def test_bearer_keys(credentials: str | None, expected: bool) -> None:
    assert KEYS.authorized(credentials) is expected


def test_no_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one key"):
        ApiKeys([])
