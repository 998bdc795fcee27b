"""Build the demo model store: real, *untrained* XLM-R sequence-classification checkpoints.

No hub is reachable at run time, so tests and the out-of-the-box demo use checkpoints made here: a real
``XLMRobertaForSequenceClassification`` per variant (same shape, different seeds, so they disagree like real
variants would) and a real XLM-R tokenizer trained with ``tokenizers`` on the multilingual sentences in
``sample_pairs.tsv``. Their predictions are noise; every folder carries a marker that `/variants` reports.
Which checkpoints: app.demo.lineup; the tokenizer: app.demo.tokenizer.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Literal

from app.demo.lineup import DEMO_DEPLOYMENTS, DEMO_LINEUP, DEMO_NOTICE, JOEDDAV_ORDER, SERVICE_ORDER, catalogue_toml
from app.demo.tokenizer import demo_tokenizer
from app.engine.models.store import DEMO_MARKER
from app.samples import sample_pairs
from app.settings import CATALOGUE_FILE

# DEMO_* and JOEDDAV_ORDER are re-exported: the line-up's home is app.demo.lineup
__all__ = [
    "DEMO_DEPLOYMENTS",
    "DEMO_LINEUP",
    "DEMO_NOTICE",
    "JOEDDAV_ORDER",
    "SHAPES",
    "Size",
    "build_demo_store",
    "calibrate_random_head",
    "demo_config",
]

log = logging.getLogger(__name__)

Size = Literal["tiny", "base", "large"]

# Encoder shapes: "base" and "large" have XLM-R base's (12 x 768) and large's (24 x 1024, the model the
# intermediate-task study fine-tuned) encoders so latency is realistic; their embedding tables are smaller (the demo
# vocabulary), which changes memory, not compute per token.
SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
}
# A 2-layer encoder at XLM-R's init (std 0.02) gives almost the same [CLS] vector for every input (between-input
# std 0.004 of a 0.8 magnitude); a wider init makes the tiny demo's answers depend on what it reads.
INITIALIZER_RANGE = {"tiny": 0.2, "base": 0.02, "large": 0.02}

HEAD_LOGIT_SCALE = 2.0  # spread of the calibrated head's logits across inputs: varied, not saturated, answers


def calibrate_random_head(model: Any, tokenizer: Any) -> None:
    """Rescale the random classification head on our sample pairs so answers vary with the input.

    A random head on a random encoder puts every input deep in one label's corner (probability 1.0 for all of them),
    which hides every difference a backend or precision makes. Centring and scaling each layer on the sample pairs
    keeps the weights random (accuracy stays at chance) but makes the probabilities input-dependent and graded, so
    side-by-side variants disagree and the accuracy guard compares something real.
    """
    import torch

    rows = sample_pairs()
    encoded = tokenizer(
        [premise for _, premise, _, _ in rows],
        [hypothesis for _, _, hypothesis, _ in rows],
        padding=True,
        return_tensors="pt",
    )
    head = model.classifier
    with torch.no_grad():
        features = model.roberta(**encoded.to(model.device)).last_hidden_state[:, 0]
        for layer, scale in ((head.dense, 1.0), (head.out_proj, HEAD_LOGIT_SCALE)):
            layer.weight.normal_(0.0, 1.0)
            outputs = features @ layer.weight.T
            spread = outputs.std(0).clamp_min(1e-6)
            layer.weight.mul_((scale / spread)[:, None])
            layer.bias.copy_(-(outputs.mean(0) * scale / spread))
            features = torch.tanh(layer(features)) if layer is head.dense else layer(features)


def demo_config(size: Size, vocab_size: int, label_order: tuple[str, str, str] = SERVICE_ORDER) -> Any:
    """The ``XLMRobertaConfig`` of a demo checkpoint of ``size`` (no weights are made)."""
    from transformers import XLMRobertaConfig

    if size not in SHAPES:
        raise ValueError(f"unknown demo size {size!r}; choose from {sorted(SHAPES)}")
    return XLMRobertaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        id2label=dict(enumerate(label_order)),
        label2id={label: index for index, label in enumerate(label_order)},
        initializer_range=INITIALIZER_RANGE[size],
        hidden_size=SHAPES[size]["hidden_size"],
        num_hidden_layers=SHAPES[size]["num_hidden_layers"],
        num_attention_heads=SHAPES[size]["num_attention_heads"],
        intermediate_size=SHAPES[size]["intermediate_size"],
    )


def build_demo_store(
    out: Path,
    size: Size = "tiny",
    force: bool = False,
    variants: list[str] | None = None,
    tokenizer_corpus: Path | None = None,
    tokenizer_from: Path | None = None,
    vocab_size: int | None = None,
) -> list[Path]:
    """Write the demo checkpoints under ``out`` (and a catalogue if ``out`` has none); returns the folders made.

    ``tokenizer_corpus``, ``tokenizer_from`` and ``vocab_size`` choose the tokenizer (see :func:`demo_tokenizer`).
    """
    import torch
    from transformers import XLMRobertaForSequenceClassification
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    if size not in SHAPES:
        raise ValueError(f"unknown demo size {size!r}; choose from {sorted(SHAPES)}")
    lineup = [variant for variant in DEMO_LINEUP if not variants or variant.name in variants]
    unknown = sorted(set(variants or []) - {variant.name for variant in DEMO_LINEUP})
    if unknown:
        raise ValueError(f"unknown demo variants {unknown}; choose from {[v.name for v in DEMO_LINEUP]}")
    out.mkdir(parents=True, exist_ok=True)
    catalogue = out / CATALOGUE_FILE
    if not catalogue.exists():
        catalogue.write_text(catalogue_toml(), encoding="utf-8")

    todo = [variant for variant in lineup if force or not (out / variant.name / "config.json").is_file()]
    if not todo:
        return []
    tokenizer, tokenizer_source = demo_tokenizer(tokenizer_corpus, tokenizer_from, vocab_size)
    made = []
    for variant in todo:
        folder = out / variant.name
        if folder.exists():
            shutil.rmtree(folder)
        torch.manual_seed(variant.seed)
        model: Any = XLMRobertaForSequenceClassification(demo_config(size, len(tokenizer), variant.label_order))
        model.train(False)
        if torch.cuda.is_available():  # XLM-R large on the sample pairs: minutes on a few CPU cores, a second here
            calibrate_random_head(model.to("cuda"), tokenizer)
            model.to("cpu")
        else:
            calibrate_random_head(model, tokenizer)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        marker = {
            "untrained": True,
            "size": size,
            "seed": variant.seed,
            "tokenizer": tokenizer_source,
            "notice": DEMO_NOTICE,
        }
        (folder / DEMO_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        log.info("built demo variant %s (%s, tokenizer %s) in %s", variant.name, size, tokenizer_source, folder)
        made.append(folder)
    return made
