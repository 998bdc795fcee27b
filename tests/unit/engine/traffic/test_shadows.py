"""Shadow traffic end to end in the engine, with tiny real checkpoints: comparisons, the flip matrix, drops."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from app.engine.engine import Engine
from app.engine.errors import OverloadedError
from app.engine.models.catalogue import load_catalogue
from app.engine.tasks.nli import LABELS
from app.metrics import SHADOW_DROP_REASONS, language_label
from app.samples import sample_pairs
from tests.support.helpers import write_catalogue

SAMPLES = sample_pairs()  # 76 pairs written for this repository, in 17 languages
SHADOWS = [("sh-primary", "sh-twin"), ("sh-primary", "sh-other"), ("sh-slow", "sh-slow-twin")]
DROP_REASONS = SHADOW_DROP_REASONS


def traffic_toml(shadows: list[tuple[str, str]]) -> str:
    return "".join(
        f'\n[[traffic.shadow]]\nprimary = "{primary}"\ncandidate = "{candidate}"\nfraction = 1.0\n'
        for primary, candidate in shadows
    )


def build_engine(
    folder: Path, store: Path, variants: list[dict[str, object]], shadows: list[tuple[str, str]]
) -> Engine:
    path = write_catalogue(folder / "variants.toml", store, variants)
    path.write_text(path.read_text(encoding="utf-8") + traffic_toml(shadows), encoding="utf-8")
    engine = Engine(load_catalogue(path), tokenization_workers=1, torch_threads=1, allow_faults=True, traffic_seed=0)
    engine.preflight()
    engine.load()
    return engine


@pytest.fixture(scope="module")
def engine(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    slow = {"delay_ms": 20.0}
    loaded = build_engine(
        tmp_path_factory.mktemp("shadow"),
        demo_store,
        [
            {"name": "sh-primary"},
            {"name": "sh-twin"},  # the same checkpoint under another name
            {"name": "sh-other", "checkpoint": "xlmr-squad-mnli"},
            # Saturation: forward passes that sleep 20 ms (no CPU burnt), a small queue that refuses with 429 soon.
            {"name": "sh-slow", "max_queue_pairs": 16, "max_batch_size": 4, "faults": slow},
            {"name": "sh-slow-twin", "max_batch_size": 4, "faults": slow},
            {"name": "sh-slow-alone", "max_queue_pairs": 16, "max_batch_size": 4, "faults": slow},
        ],
        SHADOWS,
    )
    yield loaded
    loaded.close()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def shadow_counts(primary: str, candidate: str) -> dict[str, object]:
    """Every shadow series of one primary/candidate pair, read from the process registry."""
    flips = Counter[tuple[str, str]]()
    by_language = Counter[str]()
    for family in REGISTRY.collect():
        if family.name != "xnli_shadow_pairs":
            continue
        for metric in family.samples:
            if (
                metric.name == "xnli_shadow_pairs_total"
                and metric.labels["primary"] == primary
                and metric.labels["candidate"] == candidate
            ):
                flips[(metric.labels["primary_label"], metric.labels["candidate_label"])] += int(metric.value)
                by_language[metric.labels["language"]] += int(metric.value)
    names = {"primary": primary, "candidate": candidate}
    return {
        "sampled": sample("xnli_shadow_sampled_pairs_total", **names),
        "dropped": {
            reason: sample("xnli_shadow_dropped_pairs_total", **names, reason=reason) for reason in DROP_REASONS
        },
        "flips": flips,
        "languages": by_language,
        "diff_count": sample("xnli_shadow_probability_diff_count", **names),
        "diff_sum": sample("xnli_shadow_probability_diff_sum", **names),
    }


def grown(before: dict[str, object], after: dict[str, object]) -> dict[str, object]:
    def minus(new: object, old: object) -> object:
        if isinstance(new, Counter):
            assert isinstance(old, Counter)
            return +(new - old)
        if isinstance(new, dict):
            assert isinstance(old, dict)
            return {key: minus(value, old[key]) for key, value in new.items()}
        assert isinstance(new, float)
        assert isinstance(old, float)
        return new - old

    return {key: minus(value, before[key]) for key, value in after.items()}


async def send_by_language(engine: Engine, variant: str) -> np.ndarray:
    """The sample pairs, one request per language (in order), each answered before the next is sent."""
    rows = []
    languages = list(dict.fromkeys(language for language, *_ in SAMPLES))
    for language in languages:
        pairs = [(premise, hypothesis) for code, premise, hypothesis, _ in SAMPLES if code == language]
        rows.append((await engine.predict(pairs, variant, language=language)).probabilities)
    return np.concatenate(rows)


def ordered_samples() -> list[tuple[str, str, str, str]]:
    languages = list(dict.fromkeys(language for language, *_ in SAMPLES))
    return [row for language in languages for row in SAMPLES if row[0] == language]


async def test_same_checkpoint_under_another_name_agrees_on_every_pair(engine: Engine) -> None:
    before = shadow_counts("sh-primary", "sh-twin")
    predictions_before = {
        code: sample("xnli_predictions_total", variant="sh-primary", label=label, language=code)
        for code in ("fr", "other")
        for label in LABELS
    }
    await send_by_language(engine, "sh-primary")
    await engine.wait_shadows()
    counts = grown(before, shadow_counts("sh-primary", "sh-twin"))
    pairs = len(SAMPLES)
    assert counts["sampled"] == pairs
    assert counts["dropped"] == dict.fromkeys(DROP_REASONS, 0.0)
    flips = counts["flips"]
    assert isinstance(flips, Counter)
    assert sum(flips.values()) == pairs
    assert all(primary == candidate for primary, candidate in flips), flips  # agreement 100%
    assert counts["diff_count"] == pairs
    diff_sum = counts["diff_sum"]
    assert isinstance(diff_sum, float)
    assert diff_sum < 1e-4 * pairs  # the same weights: differences are float rounding only
    expected_languages = Counter(language_label(language) for language, *_ in SAMPLES)
    assert counts["languages"] == expected_languages  # ja and ko are counted as `other`
    assert expected_languages["other"] == sum(1 for language, *_ in SAMPLES if language in ("ja", "ko"))
    predictions = {
        code: sum(
            sample("xnli_predictions_total", variant="sh-primary", label=label, language=code) for label in LABELS
        )
        - sum(value for (key, value) in predictions_before.items() if key == code)
        for code in ("fr", "other")
    }
    assert predictions == {"fr": expected_languages["fr"], "other": expected_languages["other"]}


async def test_flip_matrix_equals_an_offline_comparison_pair_for_pair(engine: Engine) -> None:
    before = shadow_counts("sh-primary", "sh-other")
    primary = await send_by_language(engine, "sh-primary")
    await engine.wait_shadows()
    counts = grown(before, shadow_counts("sh-primary", "sh-other"))
    rows = ordered_samples()
    offline = (
        await engine.predict([(premise, hypothesis) for _, premise, hypothesis, _ in rows], "sh-other")
    ).probabilities
    expected = Counter(
        (LABELS[p], LABELS[c]) for p, c in zip(primary.argmax(axis=1), offline.argmax(axis=1), strict=True)
    )
    assert counts["flips"] == expected
    assert any(p != c for p, c in expected)  # different weights: some pairs do flip, so the matrix is informative
    assert counts["diff_count"] == len(rows)
    assert counts["diff_sum"] == pytest.approx(float(np.abs(primary - offline).max(axis=1).sum()), abs=1e-4)
    assert counts["dropped"] == dict.fromkeys(DROP_REASONS, 0.0)


async def test_the_answer_never_waits_for_the_candidate(engine: Engine) -> None:
    """The primary answers in milliseconds while its shadow (a 20 ms forward pass) is still queued or running."""
    before = shadow_counts("sh-primary", "sh-twin")
    started = time.perf_counter()
    result = await engine.predict([("Il pleut.", "Le sol est sec.")], "sh-primary")
    answered = time.perf_counter() - started
    assert result.variant == "sh-primary"
    assert engine.shadows.running  # still running after the answer
    await engine.wait_shadows()
    assert grown(before, shadow_counts("sh-primary", "sh-twin"))["diff_count"] == 1
    assert answered < 5.0


async def run_load(engine: Engine, variant: str, seconds: float, clients: int = 12) -> tuple[int, int]:
    """Closed-loop clients sending 2-pair requests; returns (answered, refused with 429)."""
    answered = refused = 0
    pairs = [(premise, hypothesis) for _, premise, hypothesis, _ in SAMPLES[:2]]

    async def client() -> None:
        nonlocal answered, refused
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            try:
                await engine.predict(pairs, variant)
                answered += 1
            except OverloadedError:
                refused += 1
                await asyncio.sleep(0.005)

    await asyncio.gather(*(client() for _ in range(clients)))
    return answered, refused


async def test_a_saturated_device_drops_shadows_and_primaries_see_no_extra_429s(engine: Engine) -> None:
    alone = await run_load(engine, "sh-slow-alone", 1.5)
    before = shadow_counts("sh-slow", "sh-slow-twin")
    shadowed = await run_load(engine, "sh-slow", 1.5)
    await engine.wait_shadows()
    counts = grown(before, shadow_counts("sh-slow", "sh-slow-twin"))
    assert alone[1] > 0, alone  # the load saturates the device: without any shadow some requests get 429
    # fraction = 1.0 would double the work; shadows are dropped instead and clients are refused no more often
    # (a small slack for timing noise; sharing the client lanes' room would at least double the refusals).
    assert shadowed[1] <= alone[1] * 1.25 + 3, (alone, shadowed)
    assert shadowed[0] >= alone[0] * 0.8, (alone, shadowed)
    dropped = counts["dropped"]
    assert isinstance(dropped, dict)
    assert dropped["busy"] > 0, counts  # shadows offered while client work was queued were dropped, and counted
    assert set(reason for reason, count in dropped.items() if count) <= {"busy", "queue_full", "expired"}
    flips = counts["flips"]
    assert isinstance(flips, Counter)
    assert counts["sampled"] == sum(flips.values()) + sum(dropped.values())  # every sampled pair is accounted for


async def test_a_failing_candidate_never_fails_the_primary(demo_store: Path, tmp_path: Path) -> None:
    engine = build_engine(
        tmp_path,
        demo_store,
        [{"name": "fc-primary"}, {"name": "fc-broken", "faults": {"fail_every": 1}}],
        [("fc-primary", "fc-broken")],
    )
    try:
        before = shadow_counts("fc-primary", "fc-broken")
        for _ in range(3):
            result = await engine.predict([("Il pleut.", "Le sol est sec."), ("a b", "c d")], "fc-primary")
            assert result.probabilities.shape == (2, 3)
        await engine.wait_shadows()
        counts = grown(before, shadow_counts("fc-primary", "fc-broken"))
        assert counts["dropped"] == {**dict.fromkeys(DROP_REASONS, 0.0), "failed": 6.0}
    finally:
        engine.close()


async def test_draining_drops_queued_shadows_and_never_waits_for_them(demo_store: Path, tmp_path: Path) -> None:
    engine = build_engine(
        tmp_path,
        demo_store,
        [{"name": "dr-primary"}, {"name": "dr-slow", "faults": {"delay_ms": 300.0}, "max_batch_size": 1}],
        [("dr-primary", "dr-slow")],
    )
    try:
        before = shadow_counts("dr-primary", "dr-slow")
        await asyncio.gather(
            *(engine.predict([(f"Sentence {index}.", "Another one.")], "dr-primary") for index in range(4))
        )
        await asyncio.sleep(0.05)  # one shadow (a batch of 1 pair) is on the device, three wait in the lane
        started = time.perf_counter()
        engine.begin_drain()
        await asyncio.wait_for(engine.wait_idle(), 0.1)  # shadows are not requests in flight
        await asyncio.wait_for(engine.wait_shadows(), 2.0)
        assert time.perf_counter() - started < 1.0  # not 4 x 300 ms: the queued ones were dropped
        counts = grown(before, shadow_counts("dr-primary", "dr-slow"))
        assert counts["sampled"] == 4
        dropped = counts["dropped"]
        assert isinstance(dropped, dict)
        assert dropped["draining"] == 3
        assert counts["diff_count"] == 1
    finally:
        engine.close()
