"""The prediction service driven with no HTTP at all: typed query in, typed result out, counted once."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from app.engine.engine import Engine
from app.engine.errors import UnknownVariantError
from app.metrics import UNKNOWN_VARIANT
from app.service.prediction import (
    ClientDisconnected,
    InvalidQueryError,
    PredictionQuery,
    PredictionService,
    TooManyPairsError,
)

PAIRS = [("Le chat dort sur le canapé.", "Un animal se repose."), ("Il neige en montagne.", "Il fait chaud.")]
ENDPOINT = "in_process_test"


def requests_total(variant: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("xnli_requests_total", {"variant": variant, "outcome": outcome}) or 0.0


def durations(variant: str) -> float:
    labels = {"variant": variant, "endpoint": ENDPOINT}
    return REGISTRY.get_sample_value("xnli_request_duration_seconds_count", labels) or 0.0


@pytest.fixture
def service(engine: Engine) -> PredictionService:
    return PredictionService(engine, max_pairs_per_request=4)


async def test_a_query_is_predicted_and_counted_once(service: PredictionService) -> None:
    success, observed = requests_total("xlmr-mnli", "success"), durations("xlmr-mnli")
    result = await service.predict(PredictionQuery(PAIRS, variant="xlmr-mnli", language="fr"), ENDPOINT)
    assert result.variant == "xlmr-mnli"
    assert result.probabilities.shape == (2, 3)
    assert result.probabilities.sum(axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    assert result.truncated == [False, False]
    assert requests_total("xlmr-mnli", "success") == success + 1
    assert durations("xlmr-mnli") == observed + 1


async def test_no_variant_named_takes_the_default(service: PredictionService, engine: Engine) -> None:
    result = await service.predict(PredictionQuery(PAIRS[:1], priority="batch"), ENDPOINT)
    assert result.variant == engine.default_variant


async def test_an_unknown_variant_is_not_found(service: PredictionService) -> None:
    before = requests_total(UNKNOWN_VARIANT, "not_found")
    with pytest.raises(UnknownVariantError):
        await service.predict(PredictionQuery(PAIRS, variant="ghost"), ENDPOINT)
    assert requests_total(UNKNOWN_VARIANT, "not_found") == before + 1


@pytest.mark.parametrize(
    ("query", "error"),
    [
        (PredictionQuery(PAIRS * 3, variant="xlmr-mnli"), TooManyPairsError),
        (PredictionQuery([], variant="xlmr-mnli"), InvalidQueryError),
        (PredictionQuery(PAIRS, variant="xlmr-mnli", priority="shadow"), InvalidQueryError),
        (PredictionQuery(PAIRS, variant="xlmr-mnli", language=""), InvalidQueryError),
        (PredictionQuery(PAIRS, variant="xlmr-mnli", language="x" * 36), InvalidQueryError),
        (PredictionQuery(PAIRS, variant="xlmr-mnli", timeout_s=0.0), InvalidQueryError),
        (PredictionQuery(PAIRS, variant="xlmr-mnli", timeout_s=3601.0), InvalidQueryError),
    ],
    ids=["too-many-pairs", "no-pairs", "shadow-priority", "empty-language", "long-language", "zero-timeout", "hour+"],
)
async def test_invalid_queries_are_client_errors(
    service: PredictionService, query: PredictionQuery, error: type[Exception]
) -> None:
    before = requests_total("xlmr-mnli", "client_error")
    with pytest.raises(error):
        await service.predict(query, ENDPOINT)
    assert requests_total("xlmr-mnli", "client_error") == before + 1


async def test_the_callers_disconnection_cancels_the_prediction(service: PredictionService) -> None:
    gone = asyncio.Event()
    gone.set()  # the caller has left by the time the pairs wait for the device
    before = requests_total("xlmr-mnli", "disconnected")
    failures = REGISTRY.get_sample_value(
        "xnli_request_failures_total", {"variant": "xlmr-mnli", "reason": "disconnected"}
    )
    with pytest.raises(ClientDisconnected):
        await service.predict(PredictionQuery(PAIRS, variant="xlmr-mnli"), ENDPOINT, gone.wait)
    assert requests_total("xlmr-mnli", "disconnected") == before + 1
    after = REGISTRY.get_sample_value("xnli_request_failures_total", {"variant": "xlmr-mnli", "reason": "disconnected"})
    assert after == (failures or 0.0) + 1
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0  # the service took back the cancellation it made


async def test_a_cancellation_by_the_server_is_not_swallowed(service: PredictionService) -> None:
    never = asyncio.Event()
    task = asyncio.ensure_future(service.predict(PredictionQuery(PAIRS, variant="xlmr-mnli"), ENDPOINT, never.wait))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_caller_who_stays_gets_the_answer(service: PredictionService) -> None:
    never = asyncio.Event()
    result = await service.predict(PredictionQuery(PAIRS, variant="xlmr-mnli"), ENDPOINT, never.wait)
    assert result.probabilities.shape == (2, 3)
