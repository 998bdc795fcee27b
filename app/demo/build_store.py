"""Build the demo model store: real, *untrained* XLM-R sequence-classification checkpoints.

No hub is reachable at run time, so tests and the out-of-the-box demo use checkpoints made here: a real
``XLMRobertaForSequenceClassification`` per variant (same shape, different seeds, so they disagree like real
variants would) and a real XLM-R tokenizer trained with ``tokenizers`` on the multilingual sentences in
``sample_pairs.tsv``. Their predictions are noise; every folder carries a marker that `/variants` reports.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from app.engine.model_store import DEMO_MARKER

log = logging.getLogger(__name__)

Size = Literal["tiny", "base"]

# Encoder shapes: "base" has XLM-R base's encoder (12 x 768) so latency is realistic; its embedding table is
# smaller (the demo vocabulary), which changes memory, not compute per token.
SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
}

# Public checkpoints disagree on label order; one demo variant uses another order so the by-name mapping is
# exercised in every run.
SERVICE_ORDER = ("entailment", "neutral", "contradiction")
JODDAV_ORDER = ("contradiction", "neutral", "entailment")


@dataclass(frozen=True)
class DemoVariant:
    name: str
    intermediate_task: str
    description: str
    seed: int
    label_order: tuple[str, str, str] = SERVICE_ORDER


DEMO_LINEUP: tuple[DemoVariant, ...] = (
    DemoVariant("xlmr-mnli", "none", "Baseline: XLM-R fine-tuned on MNLI only.", 11),
    DemoVariant("xlmr-squad-mnli", "squad", "SQuAD intermediate training, then MNLI.", 22),
    DemoVariant("xlmr-hellaswag-mnli", "hellaswag", "HellaSwag intermediate training, then MNLI.", 33, JODDAV_ORDER),
    DemoVariant("xlmr-multitask-mnli", "multitask", "Multi-task intermediate training, then MNLI.", 44),
)
DEFAULT_VARIANT = DEMO_LINEUP[0].name
DEMO_NOTICE = "UNTRAINED demo weights built by `xnli-serve build-demo-store`: predictions are random."


def sample_pairs() -> list[tuple[str, str, str, str]]:
    """(language, premise, hypothesis, label) rows written for this project (not XNLI data)."""
    text = resources.files("app.demo").joinpath("sample_pairs.tsv").read_text(encoding="utf-8")
    rows = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            language, premise, hypothesis, label = line.split("\t")
            rows.append((language, premise, hypothesis, label))
    return rows


def train_tokenizer(vocab_size: int = 4000) -> object:
    """An XLM-R tokenizer (SentencePiece-style unigram, XLM-R special tokens and pair template) trained locally."""
    import orjson
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import XLMRobertaTokenizer

    sentences = [sentence for _, premise, hypothesis, _ in sample_pairs() for sentence in (premise, hypothesis)]
    unigram = Tokenizer(models.Unigram())
    unigram.normalizer = normalizers.NFKC()
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        initial_alphabet=sorted({char for sentence in sentences for char in sentence}),  # no script left behind
        show_progress=False,
    )
    unigram.train_from_iterator(sentences, trainer)
    vocab = [(piece, float(score)) for piece, score in orjson.loads(unigram.to_str())["model"]["vocab"]]
    return XLMRobertaTokenizer(vocab=vocab)


def catalogue_toml() -> str:
    """The catalogue for the demo line-up; `model_store/variants.toml` is exactly this text (a test checks)."""
    lines = [
        "# xnli-serve variant catalogue.",
        "# The demo entries point at UNTRAINED checkpoints made by `xnli-serve build-demo-store` (random predictions).",
        "# Replace `path` with your own fine-tuned checkpoints (save_pretrained folders) to serve real models.",
        "# Relative paths resolve against this file's folder. See README.md, 'Variant catalogue'.",
        "",
        f'default_variant = "{DEFAULT_VARIANT}"',
        "",
        "[defaults]",
        'device = "auto"        # auto = cuda if available, else cpu; or cpu, cuda, cuda:N',
        'dtype = "auto"         # auto = float16 on CUDA, float32 on CPU; or float32, float16, bfloat16',
        "max_batch_size = 32    # pairs per forward pass",
        "max_batch_tokens = 8192  # padded tokens per forward pass (pairs x longest, rounded up to 8)",
        "max_seq_len = 256      # longer pairs lose premise tokens (or get 422 with truncate=false)",
        "max_wait_ms = 0        # 0 = run as soon as the device is free; >0 waits to fill bigger batches",
        "max_queue_pairs = 1024 # pairs that may wait; beyond that requests get 429 with Retry-After",
        "max_padding_ratio = 1.0  # cap on a batch's padding share; ~0.15 suits compute-bound CPUs",
        "enabled = true",
    ]
    for variant in DEMO_LINEUP:
        lines += [
            "",
            "[[variant]]",
            f'name = "{variant.name}"',
            f'path = "{variant.name}"',
            'base_model = "xlm-roberta-base"',
            f'intermediate_task = "{variant.intermediate_task}"',
            f'description = "{variant.description} Demo checkpoint: untrained weights."',
        ]
    return "\n".join(lines) + "\n"


def build_demo_store(
    out: Path,
    size: Size = "tiny",
    force: bool = False,
    variants: list[str] | None = None,
) -> list[Path]:
    """Write the demo checkpoints under ``out`` (and a catalogue if ``out`` has none); returns the folders made."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    lineup = [variant for variant in DEMO_LINEUP if not variants or variant.name in variants]
    unknown = sorted(set(variants or []) - {variant.name for variant in DEMO_LINEUP})
    if unknown:
        raise ValueError(f"unknown demo variants {unknown}; choose from {[v.name for v in DEMO_LINEUP]}")
    out.mkdir(parents=True, exist_ok=True)
    catalogue = out / "variants.toml"
    if not catalogue.exists():
        catalogue.write_text(catalogue_toml(), encoding="utf-8")

    todo = [variant for variant in lineup if force or not (out / variant.name / "config.json").is_file()]
    if not todo:
        return []
    tokenizer = train_tokenizer()
    made = []
    for variant in todo:
        folder = out / variant.name
        if folder.exists():
            shutil.rmtree(folder)
        torch.manual_seed(variant.seed)
        config = XLMRobertaConfig(
            vocab_size=len(tokenizer),  # type: ignore[arg-type]
            max_position_embeddings=514,
            type_vocab_size=1,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            id2label=dict(enumerate(variant.label_order)),
            label2id={label: index for index, label in enumerate(variant.label_order)},
            hidden_size=SHAPES[size]["hidden_size"],
            num_hidden_layers=SHAPES[size]["num_hidden_layers"],
            num_attention_heads=SHAPES[size]["num_attention_heads"],
            intermediate_size=SHAPES[size]["intermediate_size"],
        )
        model = XLMRobertaForSequenceClassification(config)
        model.train(False)
        # Default init (std 0.02) gives ~uniform outputs for every input; a wider random head makes the untrained
        # variants disagree visibly, which is what a demo of side-by-side variants needs.
        with torch.no_grad():
            model.classifier.dense.weight.normal_(0.0, 0.3)
            model.classifier.out_proj.weight.normal_(0.0, 1.0)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)  # type: ignore[attr-defined]
        marker = {
            "untrained": True,
            "size": size,
            "seed": variant.seed,
            "notice": DEMO_NOTICE,
        }
        (folder / DEMO_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        log.info("built demo variant %s (%s) in %s", variant.name, size, folder)
        made.append(folder)
    return made
