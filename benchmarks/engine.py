"""The limit: tokenize + forward + softmax in-process, no HTTP, no batcher, at batch sizes 1..64.

python -m benchmarks.engine --catalogue /tmp/store-base/variants.toml --variant xlmr-mnli --pairs 256
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import argument_parser, machine, mixed_pairs, percentiles, print_machine, resident_mb, write_json


def length_stats(lengths: list[int]) -> dict[str, float]:
    """Tokens per pair (special tokens included) of the benchmark's pairs, as the variant's tokenizer cuts them."""
    array = np.array(lengths)
    return {
        "mean": round(float(array.mean()), 1),
        "p50": float(np.percentile(array, 50)),
        "p95": float(np.percentile(array, 95)),
        "max": int(array.max()),
    }


def measure_engine(
    catalogue: Path,
    variant: str,
    pairs: list[tuple[str, str]],
    batch_sizes: list[int],
    torch_threads: int | None = None,
    seconds_per_batch_size: float | None = None,
) -> dict[str, Any]:
    """Each batch size runs over all ``pairs``, or stops once it has run ``seconds_per_batch_size`` (a time budget)."""
    import torch
    from transformers.utils import logging as transformers_logging

    from app.engine.backends.preparation import prepare_variant
    from app.engine.models.catalogue import load_catalogue
    from app.engine.models.store import inspect_checkpoint
    from app.engine.tasks.nli import NLI
    from app.settings import Settings

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    threads = torch_threads or Settings().torch_threads
    torch.set_num_threads(threads)
    spec = load_catalogue(catalogue, [variant]).get(variant)
    info = inspect_checkpoint(spec)
    prepared = prepare_variant(info, threads=threads)  # torch or ONNX Runtime, exactly as the service runs it
    encoder, runner = prepared.encoder, prepared.runner
    gc.collect()
    rss_mb = resident_mb()
    lengths = length_stats([len(ids) for ids in encoder.encode(pairs).ids])
    demo = info.demo or {}
    print(
        f"engine {variant}: {demo.get('size', 'not a demo')} shape, tokenizer {demo.get('tokenizer', '-')}, "
        f"{len(pairs)} pairs of {lengths['mean']} tokens on average (p95 {lengths['p95']:.0f}), graph {spec.graph} "
        f"{prepared.execution.get('graph', '')}",
        flush=True,
    )
    runner.forward(encoder.encode(pairs[:8]).ids)  # first-call overheads out of the way
    rows = []
    for batch_size in batch_sizes:
        warm = encoder.encode(pairs[:batch_size]).ids
        runner.forward(warm)  # this shape's first-call costs (kernel selection, allocator growth) out of the timing
        if info.device.type == "cuda":
            torch.cuda.synchronize()
        latencies = []
        done = 0
        started = time.perf_counter()
        for start in range(0, len(pairs), batch_size):
            began = time.perf_counter()
            chunk = pairs[start : start + batch_size]
            outputs = runner.forward(encoder.encode(chunk).ids)
            if info.device.type == "cuda":
                torch.cuda.synchronize()
            assert outputs.shape == (len(chunk), 2 * NLI.width)  # each row: probabilities, then logits (issue #26)
            latencies.append(time.perf_counter() - began)
            done += len(chunk)
            if seconds_per_batch_size is not None and time.perf_counter() - started >= seconds_per_batch_size:
                break
        elapsed = time.perf_counter() - started
        row = {"batch_size": batch_size, "pairs_per_s": done / elapsed, "pairs": done, **percentiles(latencies)}
        rows.append(row)
        print(
            f"engine {variant} batch {batch_size:3d}: {row['pairs_per_s']:8.1f} pairs/s, "
            f"batch p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms",
            flush=True,
        )
    best = max(rows, key=lambda row: row["pairs_per_s"])
    print(f"engine {variant} best: {best['pairs_per_s']:.1f} pairs/s at batch {best['batch_size']}", flush=True)
    print(f"engine {variant}: resident memory after load {rss_mb:.0f} MB", flush=True)
    return {
        "variant": variant,
        "device": str(info.device),
        "dtype": str(info.dtype),
        "size": demo.get("size"),
        "tokenizer": demo.get("tokenizer"),
        "tokens_per_pair": lengths,
        "backend": spec.backend,
        "quantization": spec.quantization,
        "graph": spec.graph,
        "execution": prepared.execution,
        "rss_mb_after_load": round(rss_mb, 1),
        "accuracy_guard": prepared.guard.describe() if prepared.guard else None,
        "rows": rows,
        "best": best,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser("benchmarks.engine", __doc__, pairs=256)
    parser.add_argument("--variant", default="xlmr-mnli")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    parser.add_argument("--seconds-per-batch-size", type=float, default=None, help="Time budget per batch size")
    args = parser.parse_args(argv)
    info = machine()
    print_machine(info)
    result = measure_engine(
        args.catalogue,
        args.variant,
        mixed_pairs(args.data, args.pairs),
        [int(b) for b in args.batch_sizes.split(",")],
        seconds_per_batch_size=args.seconds_per_batch_size,
    )
    write_json(args.out, {"machine": info, "engine": result})


if __name__ == "__main__":
    main()
