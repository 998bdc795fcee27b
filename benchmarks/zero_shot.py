"""Zero-shot classification through the service against transformers' pipeline on the same checkpoint (issue #26).

    python -m benchmarks.zero_shot --catalogue /tmp/store/variants.toml --variant xlmr-mnli \
        --labels 5,20 --concurrency 1,4,16 --seconds 5 --rounds 2 [--threads 1] [--out results.json]

One text per request, scored against the first N of twenty English topic labels with the English default template
("This example is {}.", the pipeline's own), texts drawn from the project's own sample pairs (written for it, no XNLI
sentence). Every round runs, per label count: the pipeline with its default ``batch_size=1`` (one forward pass per
label), the pipeline with ``batch_size=N`` (one forward pass per text), then the service (a real ``xnli-serve serve``
on 127.0.0.1) at each concurrency, closed loop; rounds interleave, so drift of the machine falls on all alike.

Concurrency of the pipeline: a pipeline object runs one call at a time (it is not safe to call from several threads
at once, and the model's forward pass already uses the process's torch threads), so c callers sharing it queue on one
lock: labels per second are its one-caller figure at every c (each caller waits c times as long). That figure is
measured once per round and compared with the service at each concurrency. Both use the same number of torch
threads (``--threads``), the only CPU resource they share the rules of.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from app.engine.models.catalogue import load_catalogue
from app.engine.tasks.zero_shot import ENGLISH_TEMPLATE
from app.local_server import local_server
from app.samples import sample_pairs
from benchmarks.common import argument_parser, machine, print_machine, write_json

TOPICS = (
    "politics", "sport", "science", "travel", "food", "music", "health", "business", "weather", "education",
    "technology", "art", "history", "nature", "family", "law", "religion", "film", "economy", "fashion",
)  # fmt: skip


def texts() -> list[str]:
    """The premises of the project's sample pairs, once each (several languages and scripts)."""
    return sorted({pair.premise for pair in sample_pairs()})


def pipeline_rate(pipe: Any, pool: list[str], labels: list[str], batch_size: int, seconds: float) -> dict[str, Any]:
    """One caller, calls back to back for ``seconds``: texts and labels per second, mean latency."""
    done = 0
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        started = time.perf_counter()
        pipe(
            pool[done % len(pool)],
            candidate_labels=labels,
            hypothesis_template=ENGLISH_TEMPLATE,
            batch_size=batch_size,
        )
        latencies.append(time.perf_counter() - started)
        done += 1
    elapsed = sum(latencies)
    return {
        "texts_per_s": done / elapsed,
        "labels_per_s": done * len(labels) / elapsed,
        "mean_ms": 1000 * statistics.fmean(latencies),
        "texts": done,
    }


async def service_rate(
    url: str, variant: str, pool: list[str], labels: list[str], concurrency: int, seconds: float
) -> dict[str, Any]:
    """``concurrency`` clients, closed loop, one text per request."""
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client(index: int, http: httpx.AsyncClient) -> None:
        nonlocal errors
        position = index * 7
        while time.perf_counter() < stop:
            body = {"text": pool[position % len(pool)], "candidate_labels": labels, "variant": variant}
            position += 1
            started = time.perf_counter()
            response = await http.post(f"{url}/zero-shot", json=body)
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(index, http) for index in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "texts_per_s": len(latencies) / elapsed,
        "labels_per_s": len(latencies) * len(labels) / elapsed,
        "mean_ms": 1000 * statistics.fmean(latencies) if latencies else 0.0,
        "texts": len(latencies),
        "errors": errors,
    }


def show(label: str, row: dict[str, Any]) -> None:
    errors = f" {row['errors']} errors" if row.get("errors") else ""
    print(
        f"{label:<44} {row['labels_per_s']:8.1f} labels/s {row['texts_per_s']:7.2f} texts/s "
        f"mean {row['mean_ms']:7.1f} ms{errors}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser("benchmarks.zero_shot", __doc__, pairs=0)
    parser.add_argument("--variant", default="xlmr-mnli")
    parser.add_argument("--labels", default="5,20", help="Candidate label counts per text")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=5.0, help="Per step")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the pipeline and of the server alike (default: the server's default, XNLI_SERVE_"
        "TORCH_THREADS or the physical cores); on a busy machine 2 threads can slow a forward pass tenfold",
    )
    args = parser.parse_args(argv)

    import torch
    from transformers import pipeline

    from app.settings import Settings

    threads = args.threads or Settings().torch_threads
    torch.set_num_threads(threads)
    info = machine()
    print_machine(info)
    spec = next(spec for spec in load_catalogue(args.catalogue).variants if spec.name == args.variant)
    folder = str(spec.path)
    pipe = pipeline("zero-shot-classification", model=folder, tokenizer=folder, device="cpu", dtype=torch.float32)
    pool = texts()
    label_counts = [int(count) for count in args.labels.split(",")]
    levels = [int(level) for level in args.concurrency.split(",")]
    env = {
        "XNLI_SERVE_VARIANTS": args.variant,
        "XNLI_SERVE_LOG_LEVEL": "warning",
        "XNLI_SERVE_TORCH_THREADS": str(threads),
        # The pipeline has no deadline: neither does the service here, or at 16 x 20 pairs on a slow checkpoint
        # admission would refuse (429) what it could not answer within the default 30 s.
        "XNLI_SERVE_REQUEST_TIMEOUT_S": "3600",
    }
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "xnli-bench-zero-shot.log"
    rows: list[dict[str, Any]] = []
    with local_server(args.catalogue, log, env) as running:
        url = running.base_url
        asyncio.run(service_rate(url, args.variant, pool, list(TOPICS[:5]), 4, 1.0))  # warm-up, discarded
        pipeline_rate(pipe, pool, list(TOPICS[:5]), 1, 1.0)
        for round_index in range(args.rounds):
            for count in label_counts:
                labels = list(TOPICS[:count])
                for batch_size in sorted({1, count}):
                    row = pipeline_rate(pipe, pool, labels, batch_size, args.seconds)
                    row.update(round=round_index, labels=count, who=f"pipeline batch_size={batch_size}")
                    rows.append(row)
                    show(f"round {round_index} {count} labels {row['who']}", row)
                for concurrency in levels:
                    row = asyncio.run(service_rate(url, args.variant, pool, labels, concurrency, args.seconds))
                    row.update(round=round_index, labels=count, who=f"service c={concurrency}")
                    rows.append(row)
                    show(f"round {round_index} {count} labels {row['who']}", row)
    print("\nservice labels/s over the pipeline's (default batch_size=1 / batch_size=labels), per round:", flush=True)
    verdicts: list[dict[str, Any]] = []
    for round_index in range(args.rounds):
        for count in label_counts:
            chosen = [row for row in rows if row["round"] == round_index and row["labels"] == count]
            default = next(row for row in chosen if row["who"] == "pipeline batch_size=1")
            batched = next(row for row in chosen if row["who"] == f"pipeline batch_size={count}")
            for concurrency in levels:
                service = next(row for row in chosen if row["who"] == f"service c={concurrency}")
                ratio_default = service["labels_per_s"] / default["labels_per_s"]
                ratio_batched = service["labels_per_s"] / batched["labels_per_s"]
                verdicts.append(
                    {
                        "round": round_index,
                        "labels": count,
                        "concurrency": concurrency,
                        "over_default": ratio_default,
                        "over_batched": ratio_batched,
                    }
                )
                print(
                    f"round {round_index} {count:>2} labels c={concurrency:<3} {ratio_default:6.2f}x / "
                    f"{ratio_batched:6.2f}x",
                    flush=True,
                )
    above_one = [verdict for verdict in verdicts if verdict["concurrency"] > 1]
    for key, who in (("over_default", "default batch_size=1"), ("over_batched", "batch_size=labels")):
        lowest = min(verdict[key] for verdict in above_one)
        print(f"service over the pipeline ({who}) at every concurrency above 1: lowest ratio {lowest:.2f}x")
    report = {"machine": info, "variant": args.variant, "threads": threads, "rows": rows, "verdicts": verdicts}
    write_json(args.out, report)


if __name__ == "__main__":
    main()
