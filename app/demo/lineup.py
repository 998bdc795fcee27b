"""The demo line-up: which untrained checkpoints the demo store holds, the other ways the catalogue runs one of
them, and the catalogue text that serves them all (``model_store/variants.toml`` is exactly this text)."""

from __future__ import annotations

from dataclasses import dataclass

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
        'graph = "eager"        # torch: compile, or cuda-graphs (CUDA), over fixed (rows, length) buckets',
        "graph_buckets = 32     # most buckets a graph variant compiles or captures before it is ready",
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
