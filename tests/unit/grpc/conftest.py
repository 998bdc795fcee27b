"""The servicer in-process: the API tests' real engine (one tiny torch variant and a small-queue one), called
through a stand-in for gRPC's servicer context; no socket, no server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import grpc
import pytest

from app.engine.engine import Engine
from app.grpc.service import InferenceServicer
from app.service.auth import ApiKeys
from app.service.prediction import PredictionService
from tests.unit.api.conftest import engine as engine

API_KEY = "grpc-unit-key-0123456789"


class Aborted(Exception):
    """What ``context.abort`` raises here: the status the client would see."""

    def __init__(self, code: grpc.StatusCode, details: str, metadata: dict[str, str]) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.metadata = metadata


class FakeContext:
    def __init__(self, metadata: Sequence[tuple[str, str]] = (), remaining_s: float | None = None) -> None:
        self.metadata = tuple(metadata)
        self.remaining_s = remaining_s
        self.initial_metadata: tuple[tuple[str, str], ...] = ()

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        self.initial_metadata = tuple(metadata)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def time_remaining(self) -> float | None:
        return self.remaining_s

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        raise Aborted(code, details, dict(trailing_metadata))


def context(metadata: Sequence[tuple[str, str]] = (), remaining_s: float | None = None) -> Any:
    return cast(Any, FakeContext(metadata, remaining_s))


@pytest.fixture
def servicer(engine: Engine) -> InferenceServicer:
    return InferenceServicer(engine, PredictionService(engine, 64), 64)


@pytest.fixture
def keyed_servicer(engine: Engine) -> InferenceServicer:
    return InferenceServicer(engine, PredictionService(engine, 64), 64, ApiKeys([API_KEY]))


__all__ = ["API_KEY", "Aborted", "context", "engine"]
