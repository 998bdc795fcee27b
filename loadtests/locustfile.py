"""Locust users for xnli-serve: multilingual pairs to /predict, per-variant stats, server-side timing split.

    locust -f loadtests/locustfile.py --headless --host http://127.0.0.1:8000 -u 16 -r 16 -t 60s \
        --variants xlmr-mnli,xlmr-squad-mnli [--pairs-per-request 16] [--arrival-rate 50] \
        [--xnli-dir ../shared/data/xnli --languages de,ar,zh]

Request names carry the variant (``xlmr-mnli /predict``) so Locust's statistics split by variant. Each answer's
``X-Queue-Time`` and ``X-Inference-Time`` headers are recorded as extra entries (type ``queue`` and ``inference``),
and the rest of the client-side latency as ``other`` (HTTP, serialization, tokenization), so a report can say where
the time went. ``--arrival-rate`` paces users to a fixed total request rate that does not slow down when answers do
(an open-model schedule: a late request is sent at once rather than postponed), so coordinated omission does not
hide latency. For a step ramp add ``loadtests/shapes.py`` to ``-f``.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import defaultdict
from typing import Any, ClassVar

import gevent
from locust import HttpUser, events, task
from locust.env import Environment
from locust.stats import CSV_STATS_INTERVAL_SEC

from app.xnli import LabelledPair
from loadtests.pairs import load_pairs

_samples: dict[str, list[float]] = defaultdict(list)


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    group = parser.add_argument_group("xnli-serve")
    group.add_argument(
        "--variants", default="", help="Comma-separated variants; several = a mixed run (default: server's default)"
    )
    group.add_argument(
        "--pairs-per-request", type=int, default=1, help="1 = single-pair requests; N = batched requests"
    )
    group.add_argument(
        "--xnli-dir", default="", help="XNLI-format folder (one TSV per language) instead of the shipped sample"
    )
    group.add_argument("--languages", default="", help="Comma-separated languages to draw pairs from (default: all)")
    group.add_argument(
        "--arrival-rate", type=float, default=0.0, help="Total requests/s across users (0 = closed loop)"
    )
    group.add_argument(
        "--samples-file", default="", help="Write every request's latency (ms) per name to this JSON file"
    )


@events.request.add_listener
def _record_sample(request_type: str, name: str, response_time: float, exception: Any, **_: Any) -> None:
    if exception is None and request_type == "POST":
        _samples[name].append(response_time)


@events.test_stop.add_listener
def _let_the_csv_writer_catch_up(environment: Environment, **_: Any) -> None:
    """Locust rewrites its CSVs every second and closes them at exit without a last write; waiting one interval
    after the users stopped makes the CSV hold the whole run."""
    if environment.parsed_options and environment.parsed_options.csv_prefix:
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.3)


@events.quitting.add_listener
def _write_samples(environment: Environment, **_: Any) -> None:
    path = environment.parsed_options.samples_file if environment.parsed_options else ""
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(_samples, handle)


class XnliUser(HttpUser):
    """Posts premise/hypothesis pairs, cycling through the pair pool and the chosen variants."""

    _pairs: ClassVar[list[LabelledPair]] = []

    def on_start(self) -> None:
        options = self.environment.parsed_options
        if not XnliUser._pairs:
            XnliUser._pairs = load_pairs(options.xnli_dir or None, options.languages or None)
        self.variants = [name.strip() for name in options.variants.split(",") if name.strip()] or [None]
        offset = id(self) % len(XnliUser._pairs)
        self.pair_cycle = itertools.islice(itertools.cycle(XnliUser._pairs), offset, None)
        self.variant_cycle = itertools.cycle(self.variants)
        self.pairs_per_request = max(1, options.pairs_per_request)
        self.next_send = time.monotonic()

    def wait_time(self) -> float:
        """Open-model pacing when --arrival-rate is set: fixed send times, never pushed back by slow answers."""
        rate = self.environment.parsed_options.arrival_rate
        if rate <= 0:
            return 0.0
        users = max(1, self.environment.runner.user_count if self.environment.runner else 1)
        self.next_send += users / rate
        return max(0.0, self.next_send - time.monotonic())

    @task
    def predict(self) -> None:
        variant = next(self.variant_cycle)
        chosen = [next(self.pair_cycle) for _ in range(self.pairs_per_request)]
        if self.pairs_per_request == 1:
            body: dict[str, Any] = {"premise": chosen[0].premise, "hypothesis": chosen[0].hypothesis}
        else:
            body = {"inputs": [{"premise": pair.premise, "hypothesis": pair.hypothesis} for pair in chosen]}
        if variant is not None:
            body["variant"] = variant
        label = variant or "default"
        name = f"{label} /predict" if self.pairs_per_request == 1 else f"{label} /predict x{self.pairs_per_request}"
        started = time.perf_counter()
        with self.client.post("/predict", json=body, name=name, catch_response=True) as response:
            elapsed_ms = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            queue_ms = float(response.headers.get("x-queue-time", 0.0))
            inference_ms = float(response.headers.get("x-inference-time", 0.0))
            response.success()
        for kind, value in (
            ("queue", queue_ms),
            ("inference", inference_ms),
            ("other", max(0.0, elapsed_ms - queue_ms - inference_ms)),
        ):
            events.request.fire(
                request_type=kind, name=label, response_time=value, response_length=0, exception=None, context={}
            )
