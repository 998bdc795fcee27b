"""The wire format: results and typed engine errors cross it unchanged, and the API answers them as in one process."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from app.api.errors import from_engine
from app.engine.errors import (
    EngineError,
)
from app.engine.status import PredictionResult, Timings
from app.multiprocess import channel
from tests.support.helpers import ENGINE_ERRORS, REPOSITORY_ERRORS

ERRORS = [*ENGINE_ERRORS, *REPOSITORY_ERRORS]


@pytest.mark.parametrize("error", ERRORS, ids=lambda error: type(error).__name__)
def test_engine_errors_cross_typed_and_answer_the_same(error: EngineError) -> None:
    crossed = channel.decode_error(channel.unpack(channel.pack(channel.encode_error(error))))
    assert type(crossed) is type(error)
    assert str(crossed) == str(error)
    assert vars(crossed) == vars(error)
    assert crossed.reason == error.reason
    sent, received = from_engine(error), from_engine(crossed)
    assert (received.status, received.error_type, received.message, received.headers, received.details) == (
        sent.status,
        sent.error_type,
        sent.message,
        sent.headers,
        sent.details,
    )


def test_an_unknown_error_type_arrives_as_an_engine_error() -> None:
    crossed = channel.decode_error(["SomethingNew", "what happened", {}])
    assert type(crossed) is EngineError
    assert str(crossed) == "what happened"


@pytest.mark.parametrize("rows", [1, 16])
def test_prediction_results_cross_bit_for_bit(rows: int) -> None:
    probabilities = np.random.default_rng(rows).dirichlet(np.ones(3), size=rows).astype(np.float32)
    result = PredictionResult("alpha", probabilities, [index % 3 == 0 for index in range(rows)], Timings(1e-4, 2, 3, 4))
    crossed = channel.decode_result(channel.unpack(channel.pack(channel.encode_result(result))))
    assert crossed.variant == "alpha"
    assert crossed.probabilities.dtype == np.float32
    np.testing.assert_array_equal(crossed.probabilities, probabilities)
    assert crossed.truncated == result.truncated
    assert crossed.timings == result.timings


def test_engine_state_crosses() -> None:
    variants: list[tuple[dict[str, Any], dict[str, Any], str | None]] = [({"name": "alpha"}, {"name": "alpha"}, "f00d")]
    state = channel.EngineState(True, True, False, "alpha", variants)
    assert channel.EngineState.decode(state.encode()) == state
