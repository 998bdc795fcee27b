"""`xnli-serve evaluate`: every pair of an XNLI-format folder through each variant, then the report."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from app.engine.tasks.nli import LABELS
from app.evaluation.collect import EvaluationError, Scorer, VariantScores, http_scorer, score
from app.evaluation.report import VariantResult, build_results, write_report
from app.settings import DEFAULT_CATALOGUE
from app.xnli import read_xnli


def choose_baseline(metadata: dict[str, dict[str, Any]], requested: str | None, default: str | None) -> str:
    if requested:
        if requested not in metadata:
            raise EvaluationError(f"baseline {requested!r} is not among the evaluated variants {list(metadata)}")
        return requested
    no_intermediate = [name for name, meta in metadata.items() if meta.get("intermediate_task") in ("none", "", None)]
    return no_intermediate[0] if no_intermediate else (default if default in metadata else next(iter(metadata)))


# Scores the chosen variants, one at a time, with a scorer made for each: the HTTP and in-process paths differ only
# in the scorer.
ScoreEach = Callable[[list[str], Callable[[str], Scorer]], Awaitable[dict[str, VariantScores]]]


async def _over_http(
    url: str, variants: list[str] | None, score_each: ScoreEach, api_key: str | None = None
) -> tuple[dict[str, VariantScores], dict[str, dict[str, Any]], str]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=url, timeout=600, headers=headers) as client:
        try:
            listing = await client.get("/variants")
        except httpx.TransportError as error:
            raise EvaluationError(f"cannot reach {url}: {error}") from None
        if listing.status_code in (401, 403):
            advice = "the key was refused" if api_key else "it requires an API key"
            raise EvaluationError(
                f"{url} answered {listing.status_code}: {advice}; pass --api-key or set XNLI_SERVE_API_KEY"
            )
        if listing.status_code != 200:
            raise EvaluationError(f"{url}/variants answered {listing.status_code}: {listing.text[:300]}")
        catalogue = listing.json()
        metadata = {entry["name"]: entry for entry in catalogue["variants"] if entry["status"] == "ready"}
        chosen = variants or list(metadata)
        missing = [name for name in chosen if name not in metadata]
        if missing:
            raise EvaluationError(f"variants not served at {url}: {missing}")
        scores = await score_each(chosen, lambda variant: http_scorer(client, variant))
        return scores, {name: metadata[name] for name in chosen}, catalogue["default_variant"]


async def _in_process(
    catalogue_path: Path, variants: list[str] | None, score_each: ScoreEach
) -> tuple[dict[str, VariantScores], dict[str, dict[str, Any]], str]:
    from app.engine.engine import Engine
    from app.engine.models.catalogue import load_catalogue

    engine = Engine(load_catalogue(catalogue_path, variants), request_timeout_s=3600)
    engine.preflight()
    await asyncio.to_thread(engine.load)
    try:
        chosen = [runtime.spec.name for runtime in engine.variants.values() if runtime.spec.enabled]

        def engine_scorer(variant: str) -> Scorer:
            async def scorer(chunk: list[tuple[str, str]]) -> npt.NDArray[np.float32]:
                return (await engine.predict(chunk, variant)).probabilities

            return scorer

        scores = await score_each(chosen, engine_scorer)
        metadata = {name: engine.variants[name].describe() for name in chosen}
        return scores, metadata, engine.default_variant
    finally:
        engine.close()


def evaluate(
    data: Path,
    out: Path,
    languages: list[str] | None = None,
    variants: list[str] | None = None,
    url: str | None = None,
    catalogue: Path = DEFAULT_CATALOGUE,
    baseline: str | None = None,
    batch_size: int = 32,
    concurrency: int = 4,
    limit_per_language: int | None = None,
    show_progress: bool = True,
    api_key: str | None = None,
) -> list[VariantResult]:
    pairs = read_xnli(data, languages, limit_per_language)
    language_order = list(dict.fromkeys(pair.language for pair in pairs))
    gold = np.array([LABELS.index(pair.label) for pair in pairs], dtype=np.int64)
    pair_languages = np.array([pair.language for pair in pairs])

    async def score_each(chosen: list[str], scorer_for: Callable[[str], Scorer]) -> dict[str, VariantScores]:
        """One variant at a time, so each one's latency is measured without the others competing for the device."""
        from tqdm import tqdm

        scores = {}
        for variant in chosen:
            bar = tqdm(total=len(pairs), desc=variant, unit="pair", disable=not show_progress, leave=True)
            scores[variant] = await score(variant, pairs, scorer_for(variant), batch_size, concurrency, bar.update)
        return scores

    if url:
        collected = asyncio.run(_over_http(url.rstrip("/"), variants, score_each, api_key))
    else:
        collected = asyncio.run(_in_process(catalogue, variants, score_each))
    scores, metadata, default = collected
    chosen_baseline = choose_baseline(metadata, baseline, default)
    results = build_results(scores, gold, pair_languages, language_order, metadata, chosen_baseline)
    parameters = {
        "data": str(data),
        "path": f"HTTP {url}" if url else f"in-process ({catalogue})",
        "pairs": len(pairs),
        "batch_size": batch_size,
        "concurrency": concurrency,
        "limit_per_language": limit_per_language,
    }
    write_report(results, chosen_baseline, language_order, out, parameters)
    return results
