"""Locust users for xnli-serve: multilingual pairs to /predict, per-variant stats, server-side timing split.

    locust -f loadtests/locustfile.py --headless --host http://127.0.0.1:8000 -u 16 -r 16 -t 60s \
        --variants xlmr-mnli,xlmr-squad-mnli [--pairs-per-request 16] [--arrival-rate 50] \
        [--xnli-dir ../shared/data/xnli --languages de,ar,zh] [--api-key KEY]

With several variants, every user cycles through its own seeded shuffle of them (``--seed``; a fresh shuffle each
cycle), so all variants share one time window and any drift of the machine falls on all of them alike.
``--schedule blocks --block-order a,b,b,a --block-seconds 2`` instead sends every user's requests to one variant at a
time, block after block from the moment all users have started (capacity of a variant alone; the order comes from
``loadtests.compare``; ``--block-gap`` leaves quiet seconds after each block, so that no request of one variant is
still in flight during the next's block). ``--samples-file`` keeps every request (send time, variant, latency,
server split, block).

Request names carry the variant (``xlmr-mnli /predict``) so Locust's statistics split by variant. Each answer's
``X-Queue-Time`` and ``X-Inference-Time`` headers are recorded as extra entries (type ``queue`` and ``inference``),
and the rest of the client-side latency as ``other`` (HTTP, serialization, tokenization), so a report can say where
the time went. ``--arrival-rate`` paces users to a fixed total request rate that does not slow down when answers do
(an open-model schedule: a late request is sent at once rather than postponed), so coordinated omission does not
hide latency; ``--poisson`` draws the gaps at random (open-loop Poisson arrivals, what independent clients send),
and ``--block-rates`` gives each block of the blocks schedule its own rate (the SLO search). Every request is kept
with its outcome (answered, refused 429/503, failed, timed out after ``--request-timeout``). With Locust's
``--processes`` each worker process writes its own samples file (``<samples-file>.<pid>``); ``--schedule-at`` (an
epoch time) makes them all start the blocks schedule at the same moment. For a step ramp add ``loadtests/shapes.py``
to ``-f``. ``--api-key`` (default: the environment variable ``XNLI_SERVE_API_KEY``) is sent as
``Authorization: Bearer <key>`` to a service that requires one.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import gevent
from locust import HttpUser, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import CSV_STATS_INTERVAL_SEC
from requests.exceptions import Timeout

from app.xnli import LabelledPair
from loadtests import outcomes
from loadtests.arrivals import block_at, next_arrival
from loadtests.measurements import SAMPLE_COLUMNS
from loadtests.pairs import load_pairs

_samples: list[tuple[float, int, float, float, float, int, int, int, int]] = []
# issue #26: candidate labels of the zero-shot shape (English topics: the default template's language).
TOPICS = (
    "politics", "sport", "science", "travel", "food", "music", "health", "business", "weather", "education",
    "technology", "art", "history", "nature", "family", "law", "religion", "film", "economy", "fashion",
)  # fmt: skip
_schedule_start: list[float] = []  # when every user had started (blocks schedule)


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
        "--xnli-dir", default="", help="XNLI data (a folder or file in any layout evaluate reads) instead of the sample"
    )
    group.add_argument("--languages", default="", help="Comma-separated languages to draw pairs from (default: all)")
    group.add_argument(
        "--arrival-rate", type=float, default=0.0, help="Total requests/s across users (0 = closed loop)"
    )
    group.add_argument(
        "--samples-file", default="", help="Write every request (time, variant, latency ms, ...) to this JSON file"
    )
    group.add_argument(
        "--schedule",
        choices=("interleave", "blocks"),
        default="interleave",
        help="interleave: each user cycles its own shuffled variant order; blocks: all users on one variant at a time",
    )
    group.add_argument("--seed", type=int, default=0, help="Seed of the per-user variant shuffles")
    group.add_argument("--block-order", default="", help="blocks schedule: the variant of each block, comma-separated")
    group.add_argument("--block-seconds", type=float, default=2.0, help="blocks schedule: length of a block")
    group.add_argument(
        "--block-gap",
        type=float,
        default=0.0,
        help="blocks schedule: quiet seconds after each block, so that its requests are answered (or time out) "
        "before the next variant's block starts",
    )
    group.add_argument(
        "--block-rates",
        default="",
        help="blocks schedule: each block's total arrival rate (requests/s), comma-separated",
    )
    group.add_argument("--poisson", action="store_true", help="Random (exponential) gaps between arrivals")
    group.add_argument(
        "--schedule-at", type=float, default=0.0, help="blocks schedule: epoch time its first block starts"
    )
    # issue #26: the zero-shot request shape
    group.add_argument(
        "--request-shape",
        choices=("predict", "zero-shot"),
        default="predict",
        help="predict: NLI pairs to /predict; zero-shot: texts (the pairs' premises, --pairs-per-request of them) and "
        "--zero-shot-labels candidate labels to /zero-shot",
    )
    group.add_argument(
        "--zero-shot-labels", type=int, default=5, help=f"Candidate labels per zero-shot request (1-{len(TOPICS)})"
    )
    group.add_argument(
        "--request-timeout",
        type=float,
        default=outcomes.DEFAULT_TIMEOUT_S,
        help="Seconds a request may take before it counts as timed out",
    )
    parser.add_argument(  # the parser's own add_argument: it masks secrets, a group's does not
        "--api-key",
        default=os.environ.get("XNLI_SERVE_API_KEY", ""),
        is_secret=True,
        help="Sent as Authorization: Bearer <key> (default: $XNLI_SERVE_API_KEY)",
    )


@events.spawning_complete.add_listener
def _start_schedule(user_count: int, **_: Any) -> None:
    if not _schedule_start:
        _schedule_start.append(time.time())


@events.init.add_listener
def _fixed_schedule(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is not None and options.schedule_at and not _schedule_start:
        _schedule_start.append(float(options.schedule_at))


@events.test_stop.add_listener
def _let_the_csv_writer_catch_up(environment: Environment, **_: Any) -> None:
    """Locust rewrites its CSVs every second and closes them at exit without a last write; waiting one interval
    after the users stopped makes the CSV hold the whole run."""
    if environment.parsed_options and environment.parsed_options.csv_prefix:
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.3)


@events.quitting.add_listener
def _write_samples(environment: Environment, **_: Any) -> None:
    path = environment.parsed_options.samples_file if environment.parsed_options else ""
    options = environment.parsed_options
    if isinstance(environment.runner, MasterRunner):
        return  # the workers sent the requests; each writes its own
    if isinstance(environment.runner, WorkerRunner):
        path = f"{path}.{os.getpid()}"
    if path and options is not None:
        document = {
            "columns": SAMPLE_COLUMNS,
            "variants": XnliUser.variant_names(options.variants),
            "schedule": options.schedule,
            "schedule_start": _schedule_start[0] if _schedule_start else None,
            "block_seconds": options.block_seconds,
            "block_gap": options.block_gap,
            "block_order": [name.strip() for name in options.block_order.split(",") if name.strip()],
            "block_rates": _rates(options.block_rates),
            "timeout_s": options.request_timeout,
            "rows": _samples,
        }
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(document, handle)


def _rates(option: str) -> list[float]:
    return [float(rate) for rate in option.split(",") if rate.strip()]


def shuffled_cycles(count: int, generator: random.Random) -> Iterator[int]:
    """Variant indices, each cycle of ``count`` a fresh shuffle: balanced within every cycle, unpredictable order."""
    while True:
        order = list(range(count))
        generator.shuffle(order)
        yield from order


class XnliUser(HttpUser):
    """Posts premise/hypothesis pairs, cycling through the pair pool and the chosen variants."""

    _pairs: ClassVar[list[LabelledPair]] = []
    _numbers: ClassVar[Iterator[int]] = itertools.count()

    @staticmethod
    def variant_names(option: str) -> list[str]:
        return [name.strip() for name in option.split(",") if name.strip()] or ["default"]

    def on_start(self) -> None:
        options = self.environment.parsed_options
        if not XnliUser._pairs:
            XnliUser._pairs = load_pairs(options.xnli_dir or None, options.languages or None)
        number = next(XnliUser._numbers)
        self.names = self.variant_names(options.variants)
        offset = (number * 7919) % len(XnliUser._pairs)
        self.pair_cycle = itertools.islice(itertools.cycle(XnliUser._pairs), offset, None)
        self.variant_cycle = shuffled_cycles(len(self.names), random.Random(f"{options.seed}:{number}"))
        self.block_order = [self.names.index(name) for name in options.block_order.split(",") if name.strip()]
        if options.schedule == "blocks" and not self.block_order:
            raise ValueError("--schedule blocks needs --block-order")
        self.pairs_per_request = max(1, options.pairs_per_request)
        self.headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        self.next_send = time.monotonic()
        self.block_rates = _rates(options.block_rates)
        self.next_at = time.time()  # the same, on the wall clock the blocks schedule runs on
        self.timing = random.Random(f"{options.seed}:arrivals:{number}:{os.getpid()}")
        self.last_block = -1

    def next_variant(self) -> tuple[int, int] | None:
        """(variant index, block index); None while the blocks schedule waits to start or after its last block."""
        options = self.environment.parsed_options
        assert options is not None
        if options.schedule != "blocks":
            return next(self.variant_cycle), -1
        if not _schedule_start:
            return None
        block = block_at(time.time(), _schedule_start[0], options.block_seconds, options.block_gap)
        return (self.block_order[block], block) if block is not None and 0 <= block < len(self.block_order) else None

    def wait_time(self) -> float:
        """Open-model pacing when a rate is set: send times fixed in advance (every user sends its share of the total
        rate, -u users in all, across every worker process), never pushed back by slow answers; --poisson draws
        the gaps from an exponential distribution. Under --block-rates a gap never carries one block's rate into
        the next (loadtests.arrivals), and a new block owes nothing to the last: no backlog of late sends."""
        options = self.environment.parsed_options
        users = max(1, int(options.num_users or 1))
        units = -math.log(1.0 - self.timing.random()) if options.poisson else 1.0
        if self.block_rates and _schedule_start:
            start, now = _schedule_start[0], time.time()
            block = block_at(now, start, options.block_seconds, options.block_gap)
            if block is not None and block != self.last_block:
                self.last_block = block
                self.next_at = max(self.next_at, now)
            self.next_at = next_arrival(
                self.next_at, units, start, options.block_seconds, self.block_rates, users, options.block_gap
            )
            if not math.isfinite(self.next_at):  # no rate from here on: look again in a second
                self.next_at = now + 1.0
            return max(0.0, self.next_at - time.time())
        rate = float(options.arrival_rate)
        if rate <= 0:
            return 0.0
        self.next_send += units * users / rate
        return max(0.0, self.next_send - time.monotonic())

    def request_shape(self, chosen: list[LabelledPair], label: str) -> tuple[str, dict[str, Any], str]:
        """(path, body, Locust name) of one request: NLI pairs, or (issue #26) zero-shot texts x labels."""
        options = self.environment.parsed_options
        if options.request_shape == "zero-shot":
            labels = list(TOPICS[: max(1, min(len(TOPICS), options.zero_shot_labels))])
            body = {"texts": [pair.premise for pair in chosen], "candidate_labels": labels}
            return "/zero-shot", body, f"{label} /zero-shot {len(chosen)}x{len(labels)}"
        if self.pairs_per_request == 1:
            single = {"premise": chosen[0].premise, "hypothesis": chosen[0].hypothesis}
            return "/predict", single, f"{label} /predict"
        pairs = {"inputs": [{"premise": pair.premise, "hypothesis": pair.hypothesis} for pair in chosen]}
        return "/predict", pairs, f"{label} /predict x{self.pairs_per_request}"

    @task
    def predict(self) -> None:
        chosen_variant = self.next_variant()
        if chosen_variant is None:
            gevent.sleep(0.02)
            return
        variant, block = chosen_variant
        chosen = [next(self.pair_cycle) for _ in range(self.pairs_per_request)]
        label = self.names[variant]
        path, body, name = self.request_shape(chosen, label)
        if self.environment.parsed_options.variants.strip():
            body["variant"] = label
        sent = time.time()
        started = time.perf_counter()
        timeout = self.environment.parsed_options.request_timeout
        with self.client.post(
            path, json=body, name=name, headers=self.headers, catch_response=True, timeout=timeout
        ) as response:
            elapsed_ms = (time.perf_counter() - started) * 1000
            status = int(response.status_code or 0)
            if status != 200:
                timed_out = isinstance(getattr(response, "error", None), Timeout)
                outcome = outcomes.classify(status, timed_out)
                response.failure(f"{outcomes.NAMES[outcome]} (HTTP {status}): {(response.text or '')[:200]}")
                _samples.append((sent, variant, elapsed_ms, 0.0, 0.0, 0, block, outcome, status))
                return
            queue_ms = float(response.headers.get("x-queue-time", 0.0))
            inference_ms = float(response.headers.get("x-inference-time", 0.0))
            response.success()
        _samples.append((sent, variant, elapsed_ms, queue_ms, inference_ms, 1, block, outcomes.SUCCESS, status))
        for kind, value in (
            ("queue", queue_ms),
            ("inference", inference_ms),
            ("other", max(0.0, elapsed_ms - queue_ms - inference_ms)),
        ):
            events.request.fire(
                request_type=kind, name=label, response_time=value, response_length=0, exception=None, context={}
            )
