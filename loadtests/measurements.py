"""What one compare run measured: every request of a Locust run, and the per-variant rows computed from them.

Shared by the run (loadtests.compare), its report and its plots, so that neither needs anything from the run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from loadtests import outcomes

SAMPLE_COLUMNS = ("start", "variant", "latency_ms", "queue_ms", "inference_ms", "ok", "block", "outcome", "status")
GUARD_FRACTION = 0.15  # capacity blocks: the first part of a block is discarded (the previous variant drains)


@dataclass
class LevelResult:
    """One variant at one load level: what the clients saw and the service's own numbers for the same window."""

    variant: str
    mode: str  # "users" (closed loop) or "rate" (fixed arrival rate, requests/s)
    offered: float
    design: str  # "interleaved" (all variants in one window) or "capacity" (alternating blocks, variant alone)
    requests: int
    failures: int
    error_rate: float
    window_s: float  # seconds the variant's requests were measured over
    requests_per_s: float
    pairs_per_s: float
    share: float  # of all requests in the window (interleaved: ~1/number of variants)
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    queue_ms: float
    inference_ms: float
    other_ms: float
    queue_share: float
    mean_batch_size: float
    padding_ratio: float
    metadata: dict[str, Any] = field(default_factory=dict)
    refused: int = 0  # of the failures: 429/503
    timed_out: int = 0  # of the failures: no answer within the client's timeout
    completed_per_s: float = 0.0  # answered requests per second (requests_per_s counts every request sent)
    offered_per_s: float = 0.0  # rate mode: the variant's share of the offered rate
    run: int = 1  # --repeats: which run (the variants' processes restarted in between unless --url)


# The per-request columns of Samples (the rest describe the run).
_ROW_COLUMNS = ("start", "variant", "latency_ms", "queue_ms", "inference_ms", "ok", "block", "outcome")


def _rows_of(parts: Sequence[Samples]) -> dict[str, Any]:  # arrays, typed for Samples(**...)
    """Every per-request column of ``parts``, one part after another."""
    return {name: np.concatenate([getattr(part, name) for part in parts]) for name in _ROW_COLUMNS}


@dataclass
class Samples:
    """Every request of one measured Locust run (from the locustfile's --samples-file)."""

    variants: list[str]
    start: np.ndarray  # epoch seconds at send
    variant: np.ndarray  # index into variants
    latency_ms: np.ndarray
    queue_ms: np.ndarray
    inference_ms: np.ndarray
    ok: np.ndarray  # bool
    block: np.ndarray  # blocks schedule: block index; interleaved: -1
    schedule_start: float | None
    block_seconds: float
    block_order: list[str]
    outcome: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # outcomes.SUCCESS, ...
    timeout_ms: float = outcomes.DEFAULT_TIMEOUT_S * 1000
    block_rates: list[float] = field(default_factory=list)  # blocks schedule: each block's arrival rate (SLO mode)
    block_gap: float = 0.0  # blocks schedule: quiet seconds after each block (SLO mode)

    def __post_init__(self) -> None:
        if len(self.outcome) != len(self.start):  # runs written before outcomes were kept: ok or failed
            self.outcome = np.where(self.ok, outcomes.SUCCESS, outcomes.FAILED).astype(np.int64)

    @classmethod
    def read(cls, path: Path) -> Samples:
        document = json.loads(path.read_text(encoding="utf-8"))
        rows = np.array(document["rows"], dtype=np.float64).reshape(-1, len(document["columns"]))
        column = {name: rows[:, index] for index, name in enumerate(document["columns"])}
        return cls(
            variants=document["variants"],
            start=column["start"],
            variant=column["variant"].astype(np.int64),
            latency_ms=column["latency_ms"],
            queue_ms=column["queue_ms"],
            inference_ms=column["inference_ms"],
            ok=column["ok"] > 0,
            block=column["block"].astype(np.int64),
            schedule_start=document["schedule_start"],
            block_seconds=float(document["block_seconds"]),
            block_order=document["block_order"],
            outcome=column["outcome"].astype(np.int64) if "outcome" in column else np.zeros(0, dtype=np.int64),
            timeout_ms=float(document.get("timeout_s", outcomes.DEFAULT_TIMEOUT_S)) * 1000,
            block_rates=[float(rate) for rate in document.get("block_rates", [])],
            block_gap=float(document.get("block_gap", 0.0)),
        )

    @classmethod
    def read_all(cls, path: Path) -> Samples:
        """``path`` and the files Locust's worker processes wrote beside it (``<path>.<pid>``), as one run."""
        parts = [cls.read(found) for found in [path, *sorted(path.parent.glob(f"{path.name}.*"))] if found.exists()]
        if not parts:
            raise FileNotFoundError(path)
        return replace(parts[0], **_rows_of(parts))

    @classmethod
    def joined(cls, parts: Sequence[Samples]) -> Samples:
        """Consecutive Locust runs of one level (the looks of --until-decided) as one run. Blocks schedules are
        cut to their measured part first and their blocks numbered on, so whole rounds stay whole."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        if first.schedule_start is None or not first.block_order:
            pieces, order = list(parts), first.block_order
        else:
            pieces, order, offset = [], [], 0
            for part in parts:
                measured = part.measured()
                measured.block = measured.block + offset
                pieces.append(measured)
                order += part.block_order
                offset += len(part.block_order)

        return replace(first, **_rows_of(pieces), schedule_start=None, block_order=order)

    def subset(self, keep: np.ndarray) -> Samples:
        return Samples(
            self.variants,
            self.start[keep],
            self.variant[keep],
            self.latency_ms[keep],
            self.queue_ms[keep],
            self.inference_ms[keep],
            self.ok[keep],
            self.block[keep],
            self.schedule_start,
            self.block_seconds,
            self.block_order,
            self.outcome[keep],
            self.timeout_ms,
            self.block_rates,
            self.block_gap,
        )

    def censored_ms(self) -> np.ndarray:
        """Latencies with every request that got no answer counted as lasting the client's timeout."""
        return outcomes.censored(self.latency_ms, self.ok, self.timeout_ms)

    def measured(self) -> Samples:
        """Capacity blocks without their first GUARD_FRACTION (requests still draining from the previous variant, when
        no quiet gap separated them; the ramp of the block's own rate); interleaved runs whole."""
        if self.schedule_start is None or not self.block_order:
            return self
        into_block = self.start - self.schedule_start - self.block * (self.block_seconds + self.block_gap)
        return self.subset((self.block >= 0) & (into_block >= GUARD_FRACTION * self.block_seconds))


def unit_of(results: Sequence[LevelResult]) -> str:
    """What a run's load levels count: closed-loop users or offered requests per second."""
    return "users" if results[0].mode == "users" else "requests/s offered"
