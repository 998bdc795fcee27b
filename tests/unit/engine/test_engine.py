"""The engine end to end in-process: batched results equal one-by-one runs of the plain model."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from app.engine.engine import Engine, warmup_shapes
from app.engine.errors import InferenceError, OverloadedError, UnknownVariantError, VariantNotReadyError
from app.engine.models.catalogue import load_catalogue
from app.engine.tasks.nli import LABELS
from app.samples import sample_pairs


@pytest.fixture
async def engine(demo_catalogue: Path) -> AsyncIterator[Engine]:
    instance = Engine(load_catalogue(demo_catalogue), tokenization_workers=2)
    instance.preflight()
    await asyncio.to_thread(instance.load)
    yield instance
    instance.close()


def reference_probabilities(folder: Path, pairs: list[tuple[str, str]], max_seq_len: int) -> np.ndarray:
    """The plain transformers path, one pair at a time, labels reordered by name."""
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).eval()
    names = [model.config.id2label[index].lower() for index in range(3)]
    rows = []
    with torch.inference_mode():
        for premise, hypothesis in pairs:
            encoded = tokenizer(
                premise, hypothesis, truncation="only_first", max_length=max_seq_len, return_tensors="pt"
            )
            probabilities = torch.softmax(model(**encoded).logits[0], dim=-1).tolist()
            rows.append([probabilities[names.index(label)] for label in LABELS])
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("variant", ["xlmr-mnli", "xlmr-hellaswag-mnli"])  # service order and joeddav order
async def test_batched_equals_one_by_one(engine: Engine, demo_store: Path, variant: str) -> None:
    pairs = [(premise, hypothesis) for _, premise, hypothesis, _ in sample_pairs()]
    results = await asyncio.gather(
        engine.predict(pairs[:40], variant), *(engine.predict([pair], variant) for pair in pairs[40:])
    )
    batched = np.concatenate([result.probabilities for result in results])
    expected = reference_probabilities(demo_store / variant, pairs, engine.variants[variant].spec.max_seq_len)
    np.testing.assert_allclose(batched, expected, atol=2e-5)
    queue = engine.variants[variant].queue
    assert queue is not None
    assert queue.batches_run < len(pairs)


async def test_variants_differ_and_probabilities_sum_to_one(engine: Engine) -> None:
    pairs = [(premise, hypothesis) for _, premise, hypothesis, _ in sample_pairs()][:20]
    outputs = {name: (await engine.predict(pairs, name)).probabilities for name in engine.variants}
    for probabilities in outputs.values():
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(outputs["xlmr-mnli"], outputs["xlmr-squad-mnli"], atol=1e-3)


async def test_default_variant_and_timings(engine: Engine) -> None:
    result = await engine.predict([("Il pleut.", "Le sol est mouillé.")])
    assert result.variant == "xlmr-mnli"
    timings = result.timings
    assert timings.inference_s > 0
    assert timings.total_s >= timings.tokenization_s + timings.inference_s


async def test_unknown_variant(engine: Engine) -> None:
    with pytest.raises(UnknownVariantError, match="unknown variant 'ghost'; served variants: xlmr-mnli"):
        await engine.predict([("a", "b")], "ghost")


async def test_not_ready_before_load(demo_catalogue: Path) -> None:
    engine = Engine(load_catalogue(demo_catalogue))
    assert not engine.ready
    with pytest.raises(VariantNotReadyError, match="status: pending"):
        await engine.predict([("a", "b")])


def test_ready_variants_describe_their_warmup(demo_catalogue: Path) -> None:
    engine = Engine(load_catalogue(demo_catalogue))
    engine.load()
    try:
        assert engine.ready
        described = engine.variants["xlmr-mnli"].describe()
        assert described["status"] == "ready"
        assert described["warmup"]["shapes"] == [[32, 256]]
        assert (described["demo"], described["untrained"], described["device"]) == (True, True, "cpu")
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"max_batch_size": 32, "max_batch_tokens": 8192, "max_seq_len": 256}, [(32, 256)]),
        ({"max_batch_size": 64, "max_batch_tokens": 8192, "max_seq_len": 512}, [(16, 512), (64, 128)]),
        ({"max_batch_size": 4, "max_batch_tokens": 8192, "max_seq_len": 100}, [(4, 104)]),
    ],
)
def test_warmup_covers_the_largest_shapes(options: dict[str, int], expected: list[tuple[int, int]]) -> None:
    from app.engine.models.catalogue import VariantSpec

    spec = VariantSpec.model_validate({"name": "probe", "path": "/x", **options})
    assert warmup_shapes(spec) == expected


async def test_inference_error_surfaces(engine: Engine) -> None:
    runtime = engine.variants["xlmr-squad-mnli"]
    assert runtime.queue is not None

    class Broken:
        def forward(self, sequences: object) -> np.ndarray:
            raise RuntimeError("device fell over")

    runtime.queue.runner = Broken()
    with pytest.raises(InferenceError, match="device fell over"):
        await engine.predict([("a", "b")], "xlmr-squad-mnli")
    assert (await engine.predict([("a", "b")], "xlmr-mnli")).probabilities.shape == (1, 3)


@pytest.mark.parametrize("bound", ["pairs", "characters"])
async def test_tokenization_backlog_is_bounded_and_admission_counts_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, bound: str
) -> None:
    runtime = engine.variants["xlmr-mnli"]
    assert runtime.encoder is not None
    assert runtime.queue is not None
    gate = threading.Event()
    encode = runtime.encoder.encode

    def slow_encode(*args: Any) -> Any:
        gate.wait(10)
        return encode(*args)

    monkeypatch.setattr(runtime.encoder, "encode", slow_encode)
    long_pair = ("Ein sehr langer Satz über das Wetter in den Bergen. " * 20, "Es regnet.")  # goes to the pool
    if bound == "pairs":
        monkeypatch.setattr(engine.tokenization, "max_pairs", 6)
    else:  # room for the characters of two such requests (as the encoder may read them), whatever the pair count
        monkeypatch.setattr(engine.tokenization, "max_chars", 2 * runtime.encoder.cost([long_pair] * 3))
    waiting = [asyncio.ensure_future(engine.predict([long_pair] * 3, "xlmr-mnli")) for _ in range(2)]
    await asyncio.sleep(0.05)
    assert runtime.queue.reserved_pairs == 6  # admitted and held while they are tokenized
    with pytest.raises(OverloadedError, match=r"tokenization backlog is full \(6 pairs, \d+ characters waiting"):
        await engine.predict([long_pair], "xlmr-mnli")
    assert runtime.queue.reserved_pairs == 6  # the refused request gave its room back
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert [len(result.probabilities) for result in results] == [3, 3]
    assert runtime.queue.reserved_pairs == 0
