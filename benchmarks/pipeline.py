"""The device worker's stage pipeline, on vs off: pairs/s through the whole engine (tokenize, admit, batch, forward,
answer), no HTTP, both engines loaded side by side and measured in interleaved rounds so drift falls on both.

XNLI_SERVE_WORKER_PIPELINE=auto turns the pipeline on for CUDA only; this benchmark is the evidence for that default
(gpu_check.sh runs it on the device).

python -m benchmarks.pipeline --catalogue /tmp/store/variants.toml --variant xlmr-mnli --rounds 4
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import argument_parser, machine, mixed_pairs, print_machine, write_json

MODES = ("off", "on")


async def closed_loop(engine: Any, variant: str, requests: list[list[tuple[str, str]]], clients: int) -> float:
    """``clients`` callers share the requests, each sending its next one when the last is answered; pairs/s."""
    pending = iter(requests)

    async def client() -> None:
        for pairs in pending:
            await engine.predict(pairs, variant)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return sum(len(pairs) for pairs in requests) / (time.perf_counter() - started)


async def compare(
    catalogue: Path, variant: str, pairs: list[tuple[str, str]], loads: list[tuple[int, int]], rounds: int
) -> dict[str, Any]:
    from app.cli import build_engine
    from app.settings import Settings

    engines = {}
    for mode in MODES:  # built exactly as `xnli-serve serve` builds its engine, but for the pipeline setting
        engine = build_engine(Settings(catalogue=catalogue, variants=[variant], worker_pipeline=mode))
        engine.load()
        engines[mode] = engine
    results: dict[str, Any] = {}
    try:
        for pairs_per_request, clients in loads:
            requests = [pairs[i : i + pairs_per_request] for i in range(0, len(pairs), pairs_per_request)]
            rates: dict[str, list[float]] = {mode: [] for mode in MODES}
            for round_index in range(rounds):  # off-on, on-off, ...: neither mode always runs second
                order = MODES if round_index % 2 == 0 else MODES[::-1]
                for mode in order:
                    rates[mode].append(await closed_loop(engines[mode], variant, requests, clients))
            ratios = [on / off for on, off in zip(rates["on"], rates["off"], strict=True)]
            key = f"{pairs_per_request}x{clients}"
            results[key] = {
                "pairs_per_request": pairs_per_request,
                "clients": clients,
                "pairs_per_s": rates,
                "on_over_off": ratios,
                "median_ratio": statistics.median(ratios),
            }
            print(
                f"{pairs_per_request} pair(s) per request, {clients} clients: off "
                f"{[round(rate) for rate in rates['off']]} pairs/s, on {[round(rate) for rate in rates['on']]}; "
                f"on/off per round {[round(ratio, 2) for ratio in ratios]}, median {statistics.median(ratios):.2f}",
                flush=True,
            )
    finally:
        for engine in engines.values():
            engine.close()
    return results


def parse_load(text: str) -> tuple[int, int]:
    pairs_per_request, clients = text.split("x")
    return int(pairs_per_request), int(clients)


def main() -> None:
    parser = argument_parser("benchmarks.pipeline", __doc__, pairs=512)
    parser.add_argument("--variant", default="xlmr-mnli")
    parser.add_argument("--loads", default="1x16,16x8", help="pairs per request x concurrent clients, comma-separated")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved off/on rounds per load")
    args = parser.parse_args()
    loads = [parse_load(load) for load in args.loads.split(",")]
    info = machine()
    print_machine(info)
    pairs = mixed_pairs(args.data, args.pairs)
    results = asyncio.run(compare(args.catalogue, args.variant, pairs, loads, args.rounds))
    write_json(args.out, {"machine": info, "variant": args.variant, "pairs": len(pairs), "loads": results})


if __name__ == "__main__":
    main()
