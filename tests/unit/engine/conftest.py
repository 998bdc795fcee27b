"""Fixtures of the engine tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.engine.scheduler.worker import DeviceWorker


@pytest.fixture(params=[False, True], ids=["serial", "pipelined"])
def worker(request: pytest.FixtureRequest) -> Iterator[DeviceWorker]:
    """A device worker with no queues, started by the test once its queues are in place; every test that uses it
    runs twice: batches answered on the worker thread, and answered on the post stage while the next batch runs."""
    device_worker = DeviceWorker("test", pipeline=request.param)
    yield device_worker
    device_worker.stop(5)
