"""One table from benchmark JSON files: python -m benchmarks.summary benchmarks/results/*.json"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def main(paths: list[str]) -> None:
    header = (
        "| file | shape, dtype, device (tokens/pair mean/p95) | engine best pairs/s (batch) | engine b1 p50/p99 ms "
        "| service x1 max pairs/s (ratio) | service x16 max pairs/s (ratio) | c=1 p50/p99 ms | c=1 p50 - b1 p50 ms "
        "| padding at max c | HTTP floor req/s | fair shares |"
    )
    print(header)
    print("|---" * 11 + "|")
    for path in paths:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if "closed_loop" not in data:
            continue  # not a service run (e.g. benchmarks.backends, which prints its own table)
        engine = data.get("engine", {})
        best = engine.get("best", {})
        empty: dict[str, Any] = {}
        b1: dict[str, Any] = next((row for row in engine.get("rows", []) if row["batch_size"] == 1), empty)
        closed = data.get("closed_loop", [])
        single = [row for row in closed if row["pairs_per_request"] == 1]
        batched = [row for row in closed if row["pairs_per_request"] == 16]
        top1: dict[str, Any] = max(single, key=lambda row: row["pairs_per_s"], default=empty)
        top16: dict[str, Any] = max(batched, key=lambda row: row["pairs_per_s"], default=empty)
        one: dict[str, Any] = next((row for row in single if row["concurrency"] == 1), empty)
        saturated: dict[str, Any] = max(single, key=lambda row: row["concurrency"], default=empty)
        floor = max((row["requests_per_s"] for row in data.get("http_floor", [])), default=0.0)
        shares = data.get("fair_share", {}).get("shares", {})
        lengths = engine.get("tokens_per_pair") or {}
        setup = (
            f"{engine.get('size') or '-'}, {str(engine.get('dtype', '-')).removeprefix('torch.')}, "
            f"{engine.get('device', '-')} ({lengths.get('mean', '-')}/{lengths.get('p95', '-')})"
        )
        gap = f"{one['p50_ms'] - b1['p50_ms']:+.1f}" if one and b1 else "-"
        print(
            f"| {Path(path).name} | {setup} | {best.get('pairs_per_s', 0):.1f} ({best.get('batch_size', '-')}) "
            f"| {b1.get('p50_ms', 0):.1f}/{b1.get('p99_ms', 0):.1f} "
            f"| {top1.get('pairs_per_s', 0):.1f} ({top1.get('ratio_to_engine', 0):.0%}) "
            f"| {top16.get('pairs_per_s', 0):.1f} ({top16.get('ratio_to_engine', 0):.0%}) "
            f"| {one.get('p50_ms', 0):.1f}/{one.get('p99_ms', 0):.1f} | {gap} "
            f"| {saturated.get('padding_share', 0):.0%} "
            f"| {floor:.0f} | {', '.join(f'{k} {v:.0%}' for k, v in shares.items()) or '-'} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
