"""The same HTTP-bound load on two checkouts of the service, interleaved: what a change costs per request.

    git worktree add /tmp/before <commit>
    python -m benchmarks.trees --catalogue /tmp/store/variants.toml --before /tmp/before --after . --rounds 6

Starts ``xnli-serve serve`` from each tree (the tree's own ``app`` package, this interpreter), both serving the same
catalogue with one torch thread, and alternates ``--seconds`` closed-loop rounds of single-pair /predict requests
(the fast asyncio-stream client of benchmarks.frontend, ``--concurrency`` keep-alive connections) between them, the
order rotating each round so that drift falls on both. Prints each round's requests/s and the median of the per-round
ratios after/before, and writes JSON (--out).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import orjson

from app import local_server
from app.local_server import LocalServer
from benchmarks.common import argument_parser, machine, print_machine, write_json
from benchmarks.frontend import Share, closed_loop

PAIR = {"premise": "The ferry left the harbour at dawn.", "hypothesis": "A boat departed early in the morning."}


@contextmanager
def server_from(tree: Path, catalogue: Path, log: Path, variant: str) -> Iterator[LocalServer]:
    """``python -m app serve`` run inside ``tree``, so it imports that tree's ``app``."""
    here = Path.cwd()
    os.chdir(tree)
    try:
        env = {"XNLI_SERVE_VARIANTS": variant, "XNLI_SERVE_TORCH_THREADS": "1", "PYTHONPATH": str(tree.resolve())}
        with local_server.local_server(catalogue.resolve(), log.resolve(), env) as server:
            os.chdir(here)
            yield server
    finally:
        os.chdir(here)


def main() -> None:
    parser = argument_parser("benchmarks.trees", __doc__, pairs=0)
    parser.add_argument("--before", type=Path, required=True, help="checkout measured as the baseline")
    parser.add_argument("--after", type=Path, default=Path("."), help="checkout measured against it")
    parser.add_argument("--variant", default="xlmr-mnli")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument("--logs", type=Path, default=Path("/tmp/benchmark-trees"))
    args = parser.parse_args()
    info = machine()
    print_machine(info)
    body = orjson.dumps({**PAIR, "variant": args.variant})
    rounds: list[dict[str, Any]] = []
    with ExitStack() as stack, ProcessPoolExecutor(args.client_processes) as pool:
        servers = {
            name: stack.enter_context(server_from(tree, args.catalogue, args.logs / f"{name}.log", args.variant))
            for name, tree in (("before", args.before), ("after", args.after))
        }
        for server in servers.values():  # warm-up, not measured
            host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
            closed_loop(pool, args.client_processes, Share(host, int(port), [body], args.concurrency, 2.0, 0))
        for index in range(args.rounds):
            order = ["before", "after"] if index % 2 == 0 else ["after", "before"]
            row: dict[str, Any] = {}
            for name in order:
                host, port = servers[name].base_url.removeprefix("http://").rsplit(":", 1)
                share = Share(host, int(port), [body], args.concurrency, args.seconds, 0)
                row[name] = closed_loop(pool, args.client_processes, share)
            row["ratio"] = row["after"]["requests_per_s"] / row["before"]["requests_per_s"]
            rounds.append(row)
            print(
                f"round {index + 1}: before {row['before']['requests_per_s']:.1f} req/s "
                f"(p50 {row['before']['p50_ms']:.2f} ms), after {row['after']['requests_per_s']:.1f} req/s "
                f"(p50 {row['after']['p50_ms']:.2f} ms), after/before {row['ratio']:.3f}",
                flush=True,
            )
    ratios = [row["ratio"] for row in rounds]
    summary = {
        "median_ratio": statistics.median(ratios),
        "min_ratio": min(ratios),
        "max_ratio": max(ratios),
        "before_req_s_median": statistics.median(row["before"]["requests_per_s"] for row in rounds),
        "after_req_s_median": statistics.median(row["after"]["requests_per_s"] for row in rounds),
    }
    print(
        f"after/before requests/s: median {summary['median_ratio']:.3f} (rounds {min(ratios):.3f}..{max(ratios):.3f})"
    )
    config = {key: str(value) for key, value in vars(args).items()}
    write_json(args.out, {"machine": info, "rounds": rounds, "summary": summary, "config": config})


if __name__ == "__main__":
    main()
