from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.tracing import STATE
from app.tracing.setup import shutdown


@pytest.fixture(autouse=True)
def _tracing_off_after() -> Iterator[None]:
    """Every test leaves the process as it found it: tracing off, the no-op tracer."""
    assert not STATE.active
    yield
    shutdown(wait_s=0.5)
