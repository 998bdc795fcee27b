"""API keys for every transport (HTTP's ``Authorization`` header, gRPC's ``authorization`` metadata): one check,
``Bearer <key>``, against the same keys.

Keys are kept only as SHA-256 digests and compared in constant time against every stored digest, so neither the
keys nor their position leak through memory dumps or timing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

MISSING_KEY = "missing API key: send Authorization: Bearer <key>"
INVALID_KEY = "invalid API key"


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeys:
    """The keys a protected call must present one of."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [digest(key) for key in keys]
        if not self._digests:
            raise ValueError("ApiKeys needs at least one key")

    def authorized(self, credentials: str | None) -> bool:
        """Whether ``credentials`` (an ``Authorization`` value, as sent) is ``Bearer`` and one of the keys."""
        if credentials is None:
            return False
        scheme, _, token = credentials.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        presented = digest(token.strip())
        matched = False
        for stored in self._digests:  # no early exit: time does not depend on which key matched
            matched |= hmac.compare_digest(presented, stored)
        return matched
