"""Every checkpoint layout a user may drop in loads through the engine and serves the same answers.

The folders come from tests/support/checkpoint_layouts.py: one tiny network and one SentencePiece vocabulary saved as
tokenizer.json or as XLM-R's classic sentencepiece.bpe.model, with safetensors, pytorch_model.bin or sharded weights.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from app.engine.engine import Engine, VariantStatus
from app.engine.models.catalogue import load_catalogue
from app.samples import sample_pairs
from tests.support.checkpoint_layouts import LAYOUTS, SENTENCEPIECE_MODEL, xlmr_pair_ids
from tests.support.helpers import write_catalogue
from tests.unit.engine.test_engine import reference_probabilities

MAX_SEQ_LEN = 128

# Written for this test (not from XNLI or the tokenizer's training sentences), one pair per script; some characters
# never occur in the training sentences, so <unk> mapping is exercised too.
PAIRS_BY_SCRIPT = {
    "latin": ("The old lighthouse keeper painted the door bright green.", "The door is green."),
    "cyrillic": ("Старый смотритель маяка покрасил дверь в зелёный цвет.", "Дверь зелёная."),
    "greek": ("Ο γέρος φύλακας του φάρου έβαψε την πόρτα πράσινη.", "Η πόρτα είναι πράσινη."),
    "arabic": ("طلى حارس المنارة العجوز الباب باللون الأخضر.", "الباب أخضر."),
    "devanagari": ("बूढ़े प्रकाशस्तंभ रक्षक ने दरवाज़ा हरा रंग दिया।", "दरवाज़ा हरा है।"),
    "thai": ("ผู้ดูแลประภาคารทาสีประตูเป็นสีเขียว", "ประตูเป็นสีเขียว"),
    "cjk": ("老灯塔看守人把门漆成了绿色。", "门是绿色的。"),
    "hangul": ("등대지기 할아버지가 문을 초록색으로 칠했다.", "문은 초록색이다."),
}


async def serving(checkpoint: Path, catalogue: Path) -> Engine:
    """An engine serving ``checkpoint`` as its only variant, after the same preflight `xnli-serve serve` runs."""
    write_catalogue(
        catalogue,
        checkpoint.parent,
        [{"name": "dropped-in", "checkpoint": checkpoint.name}],
        device="cpu",
        max_seq_len=MAX_SEQ_LEN,
    )
    engine = Engine(load_catalogue(catalogue), tokenization_workers=1)
    engine.preflight()
    await asyncio.to_thread(engine.load)
    return engine


@pytest.fixture(params=[layout.name for layout in LAYOUTS])
async def layout_engine(
    request: pytest.FixtureRequest, checkpoint_layouts: dict[str, Path], tmp_path: Path
) -> AsyncIterator[Engine]:
    engine = await serving(checkpoint_layouts[request.param], tmp_path / "variants.toml")
    yield engine
    engine.close()


async def test_every_layout_serves_the_reference_answers(
    layout_engine: Engine, checkpoint_layouts: dict[str, Path]
) -> None:
    engine = layout_engine
    runtime = engine.variants["dropped-in"]
    assert runtime.status is VariantStatus.READY, runtime.error
    pairs = [(premise, hypothesis) for _, premise, hypothesis, _ in sample_pairs()][:24] + list(
        PAIRS_BY_SCRIPT.values()
    )
    result = await engine.predict(pairs, "dropped-in")
    # The plain transformers path on the tokenizer.json + model.safetensors folder, one pair at a time.
    expected = reference_probabilities(checkpoint_layouts["a-tokenizer-json"], pairs, MAX_SEQ_LEN)
    np.testing.assert_allclose(result.probabilities, expected, atol=2e-5)
    assert np.ptp(expected, axis=0).max() > 0.1, "answers should vary with the input"


@pytest.mark.parametrize("layout", ["b-sentencepiece-only", "classic-xlmr"])
async def test_sentencepiece_ids_are_xlmr_ids(layout: str, checkpoint_layouts: dict[str, Path], tmp_path: Path) -> None:
    """The service's ids are SentencePiece's ids shifted by XLM-R's fairseq offset, in every script."""
    folder = checkpoint_layouts[layout]
    engine = await serving(folder, tmp_path / "variants.toml")
    try:
        encoder = engine.variants["dropped-in"].encoder
        assert encoder is not None
        pairs = list(PAIRS_BY_SCRIPT.values())
        service_ids = encoder.encode(pairs).ids
        expected = [xlmr_pair_ids(folder / SENTENCEPIECE_MODEL, premise, hypothesis) for premise, hypothesis in pairs]
        for script, got, want in zip(PAIRS_BY_SCRIPT, service_ids, expected, strict=True):
            assert got == want, script
        every_id = {token for ids in service_ids for token in ids}
        assert 3 in every_id, "some characters are unknown to the tiny vocabulary and must map to XLM-R's <unk>"
        assert len(every_id) > 100
    finally:
        engine.close()
