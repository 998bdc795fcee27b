"""Fixtures of the engine tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.engine.scheduler import DeviceWorker


@pytest.fixture
def worker() -> Iterator[DeviceWorker]:
    """A device worker with no queues, started by the test once its queues are in place."""
    device_worker = DeviceWorker("test")
    yield device_worker
    device_worker.stop(5)
