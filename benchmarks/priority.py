"""Priority classes: interactive latency alone, and beside a saturating batch-priority load.

    python -m benchmarks.priority --catalogue /tmp/prio-tiny/variants.toml --variant xlmr-mnli --seconds 15

In-process (the engine, no HTTP: on a small machine the HTTP client would compete with the model for the cores).
Interactive clients send one pair at a time with a random think time (an open-ish load well below capacity); batch
clients send ``--batch-pairs``-pair requests back to back, as bulk scoring does, enough to keep the device busy.

Three conditions on the same warm engine: interactive alone, beside the batch load sent at batch priority, and
beside the same load sent as interactive (what the service did before priority classes). A shared machine drifts,
so the conditions are interleaved: ``--rounds`` rounds, each running every condition for ``--seconds`` in a
seeded shuffled order. Prints each block, then per condition the interactive p50/p95/p99 over all its requests, the
median of its per-round p50s, the ratio of those to alone, and the batch load's throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import DEFAULT_XNLI, machine, percentiles, print_machine, write_json


def load_pairs(data: Path, count: int) -> list[tuple[str, str]]:
    """XNLI dev pairs when the data is there (languages mixed, seed 0), else the repository's own sample pairs."""
    if data.is_dir():
        from benchmarks.common import mixed_pairs

        return mixed_pairs(data, count)
    from app.samples import sample_pairs

    pairs = [(premise, hypothesis) for _, premise, hypothesis, _ in sample_pairs()]
    return (pairs * (count // len(pairs) + 1))[:count]


async def run_phase(
    engine: Any,
    variant: str,
    pairs: list[tuple[str, str]],
    seconds: float,
    interactive_clients: int,
    think_s: float,
    batch_clients: int,
    batch_pairs: int,
    batch_priority: Any | None,
    seed: int,
) -> dict[str, Any]:
    from app.engine.contract import Priority
    from app.engine.errors import EngineError

    latencies: list[float] = []
    batch_done = 0
    refused = {"interactive": 0, "batch": 0}
    stop = time.perf_counter() + seconds

    async def interactive(index: int) -> None:
        chooser = random.Random(seed * 1000 + index)
        while time.perf_counter() < stop:
            await asyncio.sleep(chooser.expovariate(1.0 / think_s))
            pair = pairs[chooser.randrange(len(pairs))]
            started = time.perf_counter()
            try:
                await engine.predict([pair], variant, priority=Priority.INTERACTIVE)
            except EngineError:
                refused["interactive"] += 1
                continue
            latencies.append(time.perf_counter() - started)

    async def bulk(index: int) -> None:
        nonlocal batch_done
        assert batch_priority is not None
        chooser = random.Random(seed * 1000 + 500 + index)
        while time.perf_counter() < stop:
            start = chooser.randrange(len(pairs) - batch_pairs + 1)
            try:
                await engine.predict(pairs[start : start + batch_pairs], variant, priority=batch_priority)
            except EngineError:
                refused["batch"] += 1
                await asyncio.sleep(0.01)
                continue
            batch_done += batch_pairs

    tasks = [interactive(index) for index in range(interactive_clients)]
    if batch_priority is not None:
        tasks += [bulk(index) for index in range(batch_clients)]
    began = time.perf_counter()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - began
    return {
        "interactive_requests": len(latencies),
        "latencies_s": latencies,
        **percentiles(latencies),
        "batch_pairs_per_s": round(batch_done / elapsed, 1),
        "refused": refused,
    }


async def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from app.engine.contract import Priority
    from app.engine.engine import Engine
    from app.engine.models.catalogue import load_catalogue
    from app.settings import Settings

    if args.no_yield:  # what the lanes give without the yield points: background batches run whole
        from app.engine.scheduler.worker import DeviceWorker

        setattr(DeviceWorker, "_preempt", lambda self: None)  # noqa: B010
    catalogue = load_catalogue(args.catalogue, [args.variant])
    if args.max_background_batch_ms is not None:
        variants = tuple(
            spec.model_copy(update={"max_background_batch_ms": args.max_background_batch_ms})
            for spec in catalogue.variants
        )
        catalogue = catalogue.model_copy(update={"variants": variants})
    settings = Settings()
    engine = Engine(
        catalogue,
        tokenization_workers=settings.tokenization_workers,
        torch_threads=args.torch_threads or settings.torch_threads,
        request_timeout_s=120.0,
    )
    engine.preflight()
    await asyncio.to_thread(engine.load)
    spec = engine.variants[args.variant].spec
    pairs = load_pairs(args.data, args.pairs)
    common = {
        "engine": engine,
        "variant": args.variant,
        "pairs": pairs,
        "seconds": args.seconds,
        "interactive_clients": args.interactive_clients,
        "think_s": args.think_ms / 1000.0,
        "batch_clients": args.batch_clients,
        "batch_pairs": args.batch_pairs,
    }
    await run_phase(**{**common, "seconds": min(3.0, args.seconds)}, batch_priority=Priority.BATCH, seed=99)  # warm
    conditions = {
        "alone": None,
        "beside_batch_priority": Priority.BATCH,
        "beside_same_load_as_interactive": Priority.INTERACTIVE,
    }
    blocks: list[dict[str, Any]] = []
    latencies: dict[str, list[float]] = {name: [] for name in conditions}
    order = random.Random(args.seed)
    for round_index in range(args.rounds):
        names = list(conditions)
        order.shuffle(names)
        for name in names:
            row = await run_phase(**common, batch_priority=conditions[name], seed=len(blocks))
            latencies[name] += row.pop("latencies_s")
            blocks.append({"round": round_index, "condition": name, **row})
            print(
                f"round {round_index} {name:32s} p50 {row['p50_ms']:7.2f} ms  p95 {row['p95_ms']:7.2f}"
                f"  ({row['interactive_requests']} requests)  batch {row['batch_pairs_per_s']:7.1f} pairs/s"
                f"  refused {row['refused']}",
                flush=True,
            )
    engine.close()
    summary: dict[str, dict[str, Any]] = {}
    for name in conditions:
        mine = [block for block in blocks if block["condition"] == name]
        summary[name] = {
            **{key: round(value, 3) for key, value in percentiles(latencies[name]).items()},
            "median_block_p50_ms": round(float(np.median([block["p50_ms"] for block in mine])), 3),
            "interactive_requests": len(latencies[name]),
            "batch_pairs_per_s": round(float(np.mean([block["batch_pairs_per_s"] for block in mine])), 1),
        }
    alone = summary["alone"]
    for name, row in summary.items():
        row["p50_ratio"] = round(row["p50_ms"] / alone["p50_ms"], 3)
        row["median_block_p50_ratio"] = round(row["median_block_p50_ms"] / alone["median_block_p50_ms"], 3)
        print(
            f"{name:32s} p50 {row['p50_ms']:7.2f} ms (x{row['p50_ratio']:.2f})  median block p50 "
            f"{row['median_block_p50_ms']:7.2f} ms (x{row['median_block_p50_ratio']:.2f})  p95 {row['p95_ms']:7.2f}"
            f"  p99 {row['p99_ms']:7.2f}  batch {row['batch_pairs_per_s']:7.1f} pairs/s"
        )
    return {
        "variant": args.variant,
        "max_background_batch_ms": spec.max_background_batch_ms,
        "max_batch_size": spec.max_batch_size,
        "yield_points": not args.no_yield,
        "settings": {key: value for key, value in vars(args).items() if key not in ("catalogue", "data", "out")},
        "summary": summary,
        "blocks": blocks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalogue", type=Path, required=True)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_XNLI, help="XNLI folder (default: beside the checkout).")
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=5.0, help="Length of each block.")
    parser.add_argument("--rounds", type=int, default=4, help="Rounds of the three conditions, shuffled per round.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the block order.")
    parser.add_argument("--interactive-clients", type=int, default=2)
    parser.add_argument("--think-ms", type=float, default=50.0, help="Mean think time of an interactive client.")
    parser.add_argument("--batch-clients", type=int, default=2)
    parser.add_argument("--batch-pairs", type=int, default=32, help="Pairs per batch-priority request.")
    parser.add_argument("--max-background-batch-ms", type=float, default=None, help="Override the catalogue's.")
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument(
        "--no-yield", action="store_true", help="Background batches run whole (no pause between layers), to compare."
    )
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here.")
    args = parser.parse_args()
    info = machine()
    print_machine(info)
    result = asyncio.run(benchmark(args))
    write_json(args.out, {"machine": info, **result})


if __name__ == "__main__":
    main()
