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
from pathlib import Path
from typing import Any, Literal

from app.engine.model_store import DEMO_MARKER
from app.samples import sample_pairs
from app.settings import CATALOGUE_FILE

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

# Vocabulary sizes. The sample pairs are too few for more than ~1,100 pieces, so the quick-start tokenizer cuts an
# XNLI pair into 91 tokens on average (p95 167), where XLM-R's own gives roughly 50-65. Trained on the XNLI dev set
# (15 languages, 37,350 pairs), 16,000 pieces give 58.3 tokens per pair (p50 56, p95 96; 8,000: 69.9; 24,000: 53.1).
SAMPLE_VOCAB_SIZE = 4000
CORPUS_VOCAB_SIZE = 16000
MIN_VOCAB_SIZE = 100
HEAD_LOGIT_SCALE = 2.0  # spread of the calibrated head's logits across inputs: varied, not saturated, answers

# Public checkpoints disagree on label order; one demo variant uses another order so the by-name mapping is
# exercised in every run.
SERVICE_ORDER = ("entailment", "neutral", "contradiction")
JOEDDAV_ORDER = ("contradiction", "neutral", "entailment")


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
    DemoVariant("xlmr-hellaswag-mnli", "hellaswag", "HellaSwag intermediate training, then MNLI.", 33, JOEDDAV_ORDER),
    DemoVariant("xlmr-multitask-mnli", "multitask", "Multi-task intermediate training, then MNLI.", 44),
)
DEFAULT_VARIANT = DEMO_LINEUP[0].name


@dataclass(frozen=True)
class DemoDeployment:
    """A demo checkpoint run another way: compared like any intermediate-task variant."""

    name: str
    checkpoint: str
    backend: str
    quantization: str
    description: str
    guard: tuple[float, float] | None = None  # (min_top1_agreement, max_probability_diff) when not the defaults


# Int8 tolerances for the demo's random weights, measured on the probe pairs on this AVX2 CPU: top-1 agreement 0.97 /
# max |dp| 0.11 (tiny), 0.84 / 0.34 (base). Random encoders leave little margin between inputs, so int8 noise moves
# them more than it moves a trained checkpoint. Keep the defaults (0.95 / 0.10) for real checkpoints.
DEMO_DEPLOYMENTS: tuple[DemoDeployment, ...] = (
    DemoDeployment(
        "xlmr-mnli-onnx", "xlmr-mnli", "onnxruntime", "none", "The baseline checkpoint run by ONNX Runtime (float32)."
    ),
    DemoDeployment(
        "xlmr-mnli-onnx-int8",
        "xlmr-mnli",
        "onnxruntime",
        "int8-dynamic",
        "The baseline checkpoint run by ONNX Runtime with int8 dynamic quantization (CPU).",
        guard=(0.80, 0.40),
    ),
)
DEMO_NOTICE = "UNTRAINED demo weights built by `xnli-serve build-demo-store`: predictions are random."


def corpus_sentences(corpus: Path) -> list[str]:
    """Every premise and hypothesis of an XNLI-format folder (one TSV per language), for training the tokenizer."""
    from app.xnli import read_xnli

    return [sentence for pair in read_xnli(corpus) for sentence in (pair.premise, pair.hypothesis)]


def train_tokenizer(vocab_size: int = SAMPLE_VOCAB_SIZE, sentences: list[str] | None = None) -> Any:
    """An XLM-R tokenizer (SentencePiece-style unigram, XLM-R special tokens and pair template) trained locally.

    On ``sentences`` (e.g. :func:`corpus_sentences`), else on the shipped sample pairs. The vocabulary may come out
    smaller than ``vocab_size`` when the sentences hold fewer distinct pieces.
    """
    import orjson
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import XLMRobertaTokenizer

    if sentences is None:
        sentences = [sentence for _, premise, hypothesis, _ in sample_pairs() for sentence in (premise, hypothesis)]
    if not sentences:
        raise ValueError("no sentences to train the demo tokenizer on")
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
        "max_background_batch_ms = 10  # longest batch-priority or shadow batch (estimated device time)",
        'backend = "torch"      # torch, or onnxruntime (exported once, cached beside the checkpoint)',
        'quantization = "none"  # none, or int8-dynamic (onnxruntime, CPU)',
        "accuracy_guard = true  # non-fp32 variants must agree with torch fp32 on the probe pairs to serve",
        "min_top1_agreement = 0.95  # guard: share of probe pairs with the same top label as torch fp32",
        "max_probability_diff = 0.10  # guard: largest probability difference from torch fp32",
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
    for deployment in DEMO_DEPLOYMENTS:
        lines += [
            "",
            "[[variant]]",
            f'name = "{deployment.name}"',
            f'path = "{deployment.checkpoint}"',
            'base_model = "xlm-roberta-base"',
            'intermediate_task = "none"',
            f'backend = "{deployment.backend}"',
            f'quantization = "{deployment.quantization}"',
        ]
        if deployment.guard is not None:
            lines += [
                f"min_top1_agreement = {deployment.guard[0]}  # demo weights are random: see README, 'Backends'",
                f"max_probability_diff = {deployment.guard[1]}",
            ]
        lines.append(f'description = "{deployment.description} Demo checkpoint: untrained weights."')
    lines += [
        "",
        "# Live traffic between variants (README, 'Live traffic between variants'). Uncomment to split the requests",
        "# that name no variant by weight (sticky per X-Routing-Key header), and to run a sampled share of one",
        "# variant's pairs on another and compare their answers (never delaying or failing the client's).",
        "# [traffic]",
        '# split = { "xlmr-mnli" = 0.9, "xlmr-squad-mnli" = 0.1 }',
        "#",
        "# [[traffic.shadow]]",
        '# primary = "xlmr-mnli"          # answers the client',
        '# candidate = "xlmr-squad-mnli"  # computes a sampled share of the primary\'s pairs; never answers the client',
        "# fraction = 0.25",
    ]
    return "\n".join(lines) + "\n"


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


def demo_tokenizer(
    tokenizer_corpus: Path | None = None, tokenizer_from: Path | None = None, vocab_size: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """The demo tokenizer and how it was made (recorded in each checkpoint's demo marker).

    Trained on the shipped sample pairs by default (quick start, tests); on an XNLI-format folder with
    ``tokenizer_corpus`` (realistic lengths for benchmarks); or loaded from an existing checkpoint folder with
    ``tokenizer_from`` (e.g. the base store's, so a large store needs no second training).
    """
    if vocab_size is not None and vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocabulary size {vocab_size} is too small: at least {MIN_VOCAB_SIZE} pieces")
    if tokenizer_corpus is not None and tokenizer_from is not None:
        raise ValueError("give a tokenizer corpus or a checkpoint to take the tokenizer from, not both")
    if tokenizer_from is not None:
        from transformers import AutoTokenizer

        if vocab_size is not None:
            raise ValueError("the vocabulary size is the checkpoint's when the tokenizer is taken from one")
        tokenizer: Any = AutoTokenizer.from_pretrained(tokenizer_from, local_files_only=True)
        marker_path = tokenizer_from / DEMO_MARKER
        source: dict[str, Any] = {}
        if marker_path.is_file():
            source = dict(json.loads(marker_path.read_text(encoding="utf-8")).get("tokenizer", {}))
        source["copied_from"] = str(tokenizer_from)
        source["vocab_size"] = len(tokenizer)
        return tokenizer, source
    if tokenizer_corpus is not None:
        tokenizer = train_tokenizer(vocab_size or CORPUS_VOCAB_SIZE, corpus_sentences(tokenizer_corpus))
        return tokenizer, {"trained_on": f"corpus {tokenizer_corpus.resolve()}", "vocab_size": len(tokenizer)}
    tokenizer = train_tokenizer(vocab_size or SAMPLE_VOCAB_SIZE)
    return tokenizer, {"trained_on": "sample pairs", "vocab_size": len(tokenizer)}


def save_demo_tokenizer(folder: Path, tokenizer_corpus: Path | None = None, vocab_size: int | None = None) -> Path:
    """Train the demo tokenizer once and save it alone (with its marker), for ``tokenizer_from`` elsewhere.

    The GPU check trains it here and carries the folder, so the device spends none of its time training.
    """
    tokenizer, source = demo_tokenizer(tokenizer_corpus, None, vocab_size)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    marker = {"untrained": True, "tokenizer": source, "notice": DEMO_NOTICE}
    (folder / DEMO_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return folder


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
