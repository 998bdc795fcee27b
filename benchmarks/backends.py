"""One checkpoint run several ways (torch fp32, ONNX Runtime fp32, int8): engine speed at equal batch, memory, guard.

python -m benchmarks.backends --catalogue /tmp/store-base/variants.toml \
    --variants xlmr-mnli,xlmr-mnli-onnx,xlmr-mnli-onnx-int8 --pairs 96 --batch-sizes 1,4,16

Each variant is measured in its own process (so resident memory is its own), on the same XNLI pairs; speed-ups are
against the first variant at the same batch size.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from app import markdown
from app.engine.models.catalogue import runtime_label
from benchmarks.common import argument_parser, machine, print_machine, write_json


def measure_in_subprocess(catalogue: Path, variant: str, data: Path, pairs: int, batch_sizes: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "engine.json"
        command = [
            sys.executable, "-m", "benchmarks.engine", "--catalogue", str(catalogue), "--variant", variant,
            "--data", str(data), "--pairs", str(pairs), "--batch-sizes", batch_sizes, "--out", str(out),
        ]  # fmt: skip
        subprocess.run(command, check=True)
        result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))["engine"]
        return result


def table(results: list[dict[str, Any]]) -> list[str]:
    reference = {row["batch_size"]: row["pairs_per_s"] for row in results[0]["rows"]}
    sizes = list(reference)
    header = ["variant", "runs as", *[f"b{size} pairs/s (x ref)" for size in sizes], "b1 p50/p99 ms", "best", "RSS MB"]
    header.append("guard: top-1 / max |dp|")
    body = []
    for result in results:
        rows = {row["batch_size"]: row for row in result["rows"]}
        runs_as = runtime_label({**result, "dtype": str(result["dtype"]).removeprefix("torch.")})
        cells = [result["variant"], runs_as]
        cells += [
            f"{rows[size]['pairs_per_s']:.2f} ({rows[size]['pairs_per_s'] / reference[size]:.2f}x)" for size in sizes
        ]
        first = rows[sizes[0]]
        cells.append(f"{first['p50_ms']:.0f}/{first['p99_ms']:.0f}")
        cells.append(f"{result['best']['pairs_per_s']:.2f} @ b{result['best']['batch_size']}")
        cells.append(f"{result['rss_mb_after_load']:.0f}")
        guard = result.get("accuracy_guard")
        cells.append(f"{guard['top1_agreement']:.3f} / {guard['max_probability_diff']:.3f}" if guard else "reference")
        body.append(cells)
    return markdown.table(header, body)


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser("benchmarks.backends", __doc__, pairs=96)
    parser.add_argument("--variants", default="xlmr-mnli,xlmr-mnli-onnx,xlmr-mnli-onnx-int8")
    parser.add_argument("--batch-sizes", default="1,4,16")
    args = parser.parse_args(argv)
    info = machine()
    print_machine(info)
    results = [
        measure_in_subprocess(args.catalogue, variant.strip(), args.data, args.pairs, args.batch_sizes)
        for variant in args.variants.split(",")
        if variant.strip()
    ]
    print("\n".join(table(results)), flush=True)
    write_json(args.out, {"machine": info, "backends": results})


if __name__ == "__main__":
    main()
