"""Schemathesis checks of our own, loaded through SCHEMATHESIS_HOOKS by tests/integration/test_fuzz.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import schemathesis

_seen: set[str] = set()


def _ran(check: str) -> None:
    """Leave proof that the check ran (Schemathesis' report does not list custom checks)."""
    if check not in _seen and (log := os.environ.get("XNLI_SERVE_FUZZ_CHECK_LOG")):
        _seen.add(check)
        with Path(log).open("a", encoding="utf-8") as handle:
            handle.write(check + "\n")


# A response may carry what the request's pairs need (three probabilities and a label per pair) plus a fixed
# envelope; it must never grow faster than the request (a /v2 request once got a 164 MB answer to 1 MB).
RESPONSE_ENVELOPE_BYTES = 256 * 1024
RESPONSE_BYTES_PER_REQUEST_BYTE = 20


@schemathesis.check
def response_size_follows_request_size(ctx: Any, response: Any, case: Any) -> None:
    _ran("response_size_follows_request_size")
    body = response.request.body or b""
    request_bytes = len(body.encode() if isinstance(body, str) else body)
    limit = RESPONSE_ENVELOPE_BYTES + RESPONSE_BYTES_PER_REQUEST_BYTE * request_bytes
    if len(response.content) > limit:
        raise AssertionError(
            f"{len(response.content)}-byte response to a {request_bytes}-byte request (at most {limit} allowed)"
        )


@schemathesis.check
def valid_data_refused_only_for_a_short_deadline(ctx: Any, response: Any, case: Any) -> None:
    """positive_data_acceptance allows 422 (schemathesis.toml) for one reason only: deadline_too_short; and 413 for
    one only (issue #26): a zero-shot request whose texts x candidate labels exceed max_pairs_per_request, or whose
    expanded pairs' characters exceed the body limit, products no schema can state (each list alone is valid)."""
    _ran("valid_data_refused_only_for_a_short_deadline")
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code not in (413, 422):
        return
    error = response.json().get("error")
    error_type = error.get("type") if isinstance(error, dict) else None
    if response.status_code == 413:
        message = error.get("message", "") if isinstance(error, dict) else ""
        expanded = "candidate labels =" in message or "candidate labels expand to" in message
        zero_shot = str(case.path).endswith("/zero-shot") and expanded
        if error_type != "too_many_pairs" or not zero_shot:
            raise AssertionError(f"schema-valid data refused with 413 {error_type}: {response.text[:500]}")
        return
    if error_type != "deadline_too_short":
        raise AssertionError(f"schema-valid data refused with 422 {error_type}: {response.text[:500]}")
