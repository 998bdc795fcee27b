"""Score XNLI pairs with each variant, in-process through the engine or over HTTP against a deployment."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np
import numpy.typing as npt

from app.engine.tasks.nli import LABELS
from app.xnli import LabelledPair


class EvaluationError(ValueError):
    """The evaluation cannot run as asked (no such variant, the service refused or is unreachable); the message says
    why and what to do."""


@dataclass
class VariantScores:
    variant: str
    predicted: npt.NDArray[np.int64]  # label index per pair, in the order the pairs were given
    request_latencies_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def pairs_per_s(self) -> float:
        return len(self.predicted) / self.wall_s if self.wall_s else 0.0


Scorer = Callable[[list[tuple[str, str]]], Awaitable[npt.NDArray[np.float32]]]


async def score(
    variant: str,
    pairs: Sequence[LabelledPair],
    scorer: Scorer,
    batch_size: int,
    concurrency: int,
    progress: Callable[[int], None] | None = None,
) -> VariantScores:
    """Send every pair in batches with bounded concurrency; keep each batch's latency."""
    predicted = np.full(len(pairs), -1, dtype=np.int64)
    latencies: list[float] = []
    limit = asyncio.Semaphore(concurrency)

    async def one(start: int) -> None:
        chunk = [(pair.premise, pair.hypothesis) for pair in pairs[start : start + batch_size]]
        async with limit:
            began = time.perf_counter()
            probabilities = await scorer(chunk)
            latencies.append(time.perf_counter() - began)
        predicted[start : start + len(chunk)] = np.argmax(probabilities, axis=1)
        if progress:
            progress(len(chunk))

    began = time.perf_counter()
    await asyncio.gather(*(one(start) for start in range(0, len(pairs), batch_size)))
    return VariantScores(variant, predicted, latencies, time.perf_counter() - began)


def http_scorer(client: httpx.AsyncClient, variant: str) -> Scorer:
    async def scorer(chunk: list[tuple[str, str]]) -> npt.NDArray[np.float32]:
        # Bulk scoring is batch work: on a live service it fills spare device time and never delays interactive
        # requests (its latencies then include waiting for that spare time).
        body = {
            "variant": variant,
            "priority": "batch",
            "inputs": [{"premise": p, "hypothesis": h} for p, h in chunk],
        }
        for attempt in range(20):
            response = await client.post("/predict", json=body)
            if response.status_code != 429:  # overload is transient: honour Retry-After and try again
                break
            await asyncio.sleep(min(5.0, float(response.headers.get("retry-after", "1"))) * (1 + attempt / 10))
        if response.status_code != 200:
            raise EvaluationError(f"{variant}: /predict answered {response.status_code}: {response.text[:300]}")
        predictions = response.json()["predictions"]
        return np.array([[row["scores"][label] for label in LABELS] for row in predictions], dtype=np.float32)

    return scorer
