"""Less Python per batch: the torch model compiled (``graph = "compile"``) or captured as CUDA graphs
(``graph = "cuda-graphs"``) over a small fixed set of (rows, padded length) buckets, all built before the variant is
ready.

Each batch is padded up to the smallest bucket that holds it (extra rows attend to one pad token, extra columns are
padding, as in ``collate``) and its rows of the result are sliced back. A batch with a few long rows may run as two
buckets instead, its shortest rows in one, the rest in the other, when that computes clearly fewer padded tokens
(``SPLIT_GAIN``): less padding for one more replay. A batch that fits no bucket (whole or split) runs eagerly and is
counted in ``xnli_graph_eager_batches_total{reason="no_bucket"}``.

Preemption: a compiled or captured forward pass runs to its end, it cannot pause between encoder blocks. So batches
the device worker runs preemptibly (batch-priority and shadow batches, which are handed a ``yield_point``) run eagerly
with their pauses (``reason="preemptible"``), paced on CUDA (``app.engine.stages.device_yield_point``); interactive
batches run on the buckets.

``compile`` uses ``torch.compile`` with ``mode="default"`` and static shapes, one specialisation per bucket (on CUDA
too: "reduce-overhead" keeps its CUDA graphs per Python thread, and the engine builds a variant on its loading thread
but serves it from the device worker's). ``cuda-graphs`` captures the eager model once per bucket on a side stream
after a few warm-up passes, with static input buffers and one memory pool shared by the variant's graphs (replayed one
at a time on one stream, as captured); CUDA only.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from app import metrics
from app.engine.padding import PAD_MULTIPLE, collate, padded_length
from app.engine.runner import warm_up_inputs
from app.engine.stages import Done, Queued, device_yield_point

log = logging.getLogger(__name__)

GRAPHS = ("eager", "compile", "cuda-graphs")
CAPTURE_WARM_UP_PASSES = 3
SPLIT_GAIN = 0.75
"""A batch runs as two buckets (shortest rows, longest rows) only when they compute at most this share of the padded
tokens of the one bucket that holds it whole: a second replay or compiled call is cheap, not free."""
Shape = tuple[int, int]
Probabilities = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def length_axis(longest: int) -> list[int]:
    """Padded lengths a bucket may have: every 16 up to 64, every 32 up to 256, every 64 up to 512, then every 128
    (a step is at most half the length below it), and ``longest`` itself."""
    lengths: list[int] = []
    length = 16
    while length < longest:
        lengths.append(length)
        length += 16 if length < 64 else 32 if length < 256 else 64 if length < 512 else 128
    return [*lengths, longest]


def rows_axis(max_rows: int) -> list[int]:
    """Rows a bucket may have: powers of two below ``max_rows``, and ``max_rows``."""
    rows = [1 << power for power in range(max_rows.bit_length()) if 1 << power < max_rows]
    return [*rows, max_rows]


def _gap(axis: list[int]) -> tuple[float, int]:
    """The inner value of ``axis`` whose neighbours are closest (by ratio): the one whose loss adds least padding."""
    if len(axis) <= 2:
        return math.inf, 0
    return min((axis[index + 1] / axis[index - 1], index) for index in range(1, len(axis) - 1))


def bucket_shapes(max_batch_size: int, max_batch_tokens: int, max_seq_len: int, count: int) -> list[Shape]:
    """At most ``count`` (rows, length) buckets, smallest first, covering every batch the batcher can form.

    Each length gets the rows axis below the most rows a batch padded to a width in (previous length, length] may
    hold (``max_batch_tokens`` over the narrowest such width), plus that most. When the grid is larger than
    ``count``, inner lengths or rows are dropped, one at a time, where neighbours are closest (by ratio); if even the
    corners are too many, the smallest buckets are kept (single pairs gain most, large batches least).
    """
    lengths = length_axis(padded_length(max_seq_len))
    rows = rows_axis(max_batch_size)

    def grid() -> list[Shape]:
        shapes: list[Shape] = []
        previous = 0
        for length in lengths:
            most = max(1, min(max_batch_size, max_batch_tokens // (previous + PAD_MULTIPLE)))
            shapes += [(row, length) for row in rows if row < most] + [(most, length)]
            previous = length
        return shapes

    shapes = grid()
    while len(shapes) > count and max(len(rows), len(lengths)) > 2:
        (length_gap, length_index), (row_gap, row_index) = _gap(lengths), _gap(rows)
        if length_gap < row_gap:
            lengths = lengths[:length_index] + lengths[length_index + 1 :]
        else:
            rows = rows[:row_index] + rows[row_index + 1 :]
        shapes = grid()
    return sorted(shapes, key=lambda shape: (shape[0] * shape[1], shape))[:count]


def pad_to_bucket(
    input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64], shape: Shape, pad_token_id: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The batch in the top-left corner of a (rows, length) block; extra columns are padding and each extra row
    attends to one pad token only (a row with nothing to attend to could give NaN in some attention kernels)."""
    rows, width = input_ids.shape
    ids = np.full(shape, pad_token_id, dtype=np.int64)
    mask = np.zeros(shape, dtype=np.int64)
    ids[:rows, :width] = input_ids
    mask[:rows, :width] = attention_mask
    mask[rows:, 0] = 1
    return ids, mask


@dataclass(frozen=True, slots=True)
class Part:
    """Rows of a batch padded into one bucket; ``rows``: their places in the batch (None: all of them, in order)."""

    rows: npt.NDArray[np.int64] | None
    count: int
    input_ids: npt.NDArray[np.int64]
    attention_mask: npt.NDArray[np.int64]
    bucket: Shape


@dataclass(frozen=True, slots=True)
class HostBatch:
    """A collated batch on the host and the bucketed parts it runs as (none: eagerly)."""

    count: int
    input_ids: npt.NDArray[np.int64]
    attention_mask: npt.NDArray[np.int64]
    parts: tuple[Part, ...]


class EagerRunner(Protocol):
    """What a bucket runner uses of the eager ``TorchRunner`` it wraps."""

    model: Any
    device: torch.device
    pad_token_id: int

    def to_device(self, array: npt.NDArray[np.int64]) -> torch.Tensor: ...

    def probabilities(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...

    def forward_tensors(
        self, input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]: ...

    def forward_tensors_preemptible(
        self,
        input_ids: npt.NDArray[np.int64],
        attention_mask: npt.NDArray[np.int64],
        yield_point: Callable[[], None],
    ) -> npt.NDArray[np.float32]: ...


class CapturedBucket:
    """One CUDA graph: static input buffers on the device and the probabilities its replay writes."""

    def __init__(self, shape: Shape, probabilities: Probabilities, device: torch.device, pool: Any) -> None:
        self.input_ids = torch.zeros(shape, dtype=torch.long, device=device)
        self.attention_mask = torch.ones(shape, dtype=torch.long, device=device)
        self.attention_mask[0, -1] = 0  # masked like a real batch, so warm-up runs the masked kernels the graph uses
        side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(CAPTURE_WARM_UP_PASSES):
                probabilities(self.input_ids, self.attention_mask)
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: another variant's batches, queued by the device worker meanwhile, do not void this capture.
        with torch.cuda.graph(self.graph, pool=pool, stream=side, capture_error_mode="thread_local"):
            self.output = probabilities(self.input_ids, self.attention_mask)
        torch.cuda.synchronize(device)

    def replay(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Copy a bucket-shaped batch into the static buffers and replay, on the current stream."""
        self.input_ids.copy_(input_ids, non_blocking=True)
        self.attention_mask.copy_(attention_mask, non_blocking=True)
        self.graph.replay()
        return self.output


class BucketRunner:
    """A ``TorchRunner`` whose interactive batches run compiled or as CUDA graphs over fixed buckets.

    Stages itself for the device worker (``prepare`` collates and pads on the host; ``launch`` runs or queues the
    forward pass) and runs whole through ``forward``; ``forward_preemptible`` runs eagerly with its pauses.
    ``build`` compiles or captures every bucket; the backend calls it before the variant is guarded and ready.
    """

    def __init__(self, eager: EagerRunner, graph: str, shapes: Sequence[Shape], variant: str) -> None:
        if graph not in GRAPHS[1:]:
            raise ValueError(f"graph must be one of {GRAPHS[1:]}, got {graph!r}")
        self.eager = eager
        self.model = eager.model
        self.device: torch.device = eager.device
        self.pad_token_id: int = eager.pad_token_id
        self.graph = graph
        self.variant = variant
        self.shapes = sorted(shapes, key=lambda shape: (shape[0] * shape[1], shape))
        self.preemptible = True
        self._cuda = self.device.type == "cuda"
        if graph == "cuda-graphs" and not self._cuda:
            raise ValueError(f"graph 'cuda-graphs' needs a CUDA device; this variant runs on {self.device}")
        self._compiled: Probabilities | None = None
        self._captured: dict[Shape, CapturedBucket] = {}
        self._buckets: dict[tuple[int, int], Shape | None] = {}
        self._rows = sorted({rows for rows, _ in self.shapes})
        self.build_seconds = 0.0

    def describe(self) -> dict[str, Any]:
        """What `/variants` shows under ``execution``."""
        return {
            "graph": self.graph,
            "buckets": [list(shape) for shape in self.shapes],
            "build_seconds": round(self.build_seconds, 3),
        }

    @torch.inference_mode()
    def build(self) -> None:
        """Compile or capture every bucket, largest first (captures then reuse the memory of larger ones)."""
        started = time.perf_counter()
        if self.graph == "compile":
            dynamo = torch._dynamo.config
            # One specialisation per bucket and variant: all share the code of ``probabilities``.
            dynamo.recompile_limit = dynamo.recompile_limit + len(self.shapes)
            dynamo.accumulated_recompile_limit = dynamo.accumulated_recompile_limit + len(self.shapes)
            self._compiled = torch.compile(self.eager.probabilities, mode="default", dynamic=False, fullgraph=False)
            for shape in reversed(self.shapes):
                self._run_bucket(*self._dummy(shape))
            with torch.compiler.set_stance("fail_on_recompile"):  # each bucket's compiled code holds: none recompiles
                for shape in self.shapes:
                    self._run_bucket(*self._dummy(shape))
        else:
            pool = torch.cuda.graph_pool_handle()
            for shape in reversed(self.shapes):
                self._captured[shape] = CapturedBucket(shape, self.eager.probabilities, self.device, pool)
        if self._cuda:
            torch.cuda.synchronize(self.device)
        self.build_seconds = time.perf_counter() - started
        log.info(
            "variant %s: %s over %d buckets built in %.1fs",
            self.variant,
            self.graph,
            len(self.shapes),
            self.build_seconds,
        )

    def _dummy(self, shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full(shape, 0 if self.pad_token_id != 0 else 1, dtype=torch.long, device=self.device)
        mask = torch.ones(shape, dtype=torch.long, device=self.device)
        mask[0, -1] = 0
        return ids, mask

    def bucket_for(self, rows: int, width: int) -> Shape | None:
        """The smallest bucket that holds a (rows, width) batch, or None."""
        key = (rows, width)
        if key not in self._buckets:
            self._buckets[key] = next((shape for shape in self.shapes if shape[0] >= rows and shape[1] >= width), None)
        return self._buckets[key]

    def plan(self, lengths: npt.NDArray[np.int64]) -> list[tuple[npt.NDArray[np.int64] | None, Shape]]:
        """The buckets a batch of rows this long runs in: the smallest that holds it whole, or its shortest rows in
        one bucket and the rest in another when that computes at most ``SPLIT_GAIN`` of the padded tokens (a batch
        with a few long rows); empty when neither fits (it runs eagerly). Split points tried: the bucket row counts
        from either end."""
        count = len(lengths)
        whole = self.bucket_for(count, padded_length(int(lengths.max())))
        best: list[tuple[npt.NDArray[np.int64] | None, Shape]] = [(None, whole)] if whole is not None else []
        best_tokens = whole[0] * whole[1] * SPLIT_GAIN if whole is not None else math.inf
        if count < 2:
            return best
        order = np.argsort(lengths, kind="stable")
        ordered = lengths[order]
        longest = padded_length(int(ordered[-1]))
        for split in sorted({r for r in self._rows if r < count} | {count - r for r in self._rows if r < count}):
            short = self.bucket_for(split, padded_length(int(ordered[split - 1])))
            long = self.bucket_for(count - split, longest)
            if short is None or long is None:
                continue
            tokens = short[0] * short[1] + long[0] * long[1]
            if tokens < best_tokens:
                best_tokens, best = tokens, [(order[:split], short), (order[split:], long)]
        return best

    def _run_bucket(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        shape = (int(input_ids.shape[0]), int(input_ids.shape[1]))
        if self._compiled is not None:
            return self._compiled(input_ids, attention_mask)
        return self._captured[shape].replay(input_ids, attention_mask)

    def prepare(self, sequences: Sequence[Sequence[int]]) -> HostBatch:
        input_ids, attention_mask = collate(sequences, self.pad_token_id)
        return self._host_batch(input_ids, attention_mask)

    def _host_batch(self, input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64]) -> HostBatch:
        lengths = attention_mask.sum(axis=1)
        parts = []
        for rows, bucket in self.plan(lengths):
            ids, mask = (input_ids, attention_mask) if rows is None else (input_ids[rows], attention_mask[rows])
            width = padded_length(int(lengths.max() if rows is None else lengths[rows].max()))
            padded_ids, padded_mask = pad_to_bucket(ids[:, :width], mask[:, :width], bucket, self.pad_token_id)
            parts.append(Part(rows, len(ids), padded_ids, padded_mask, bucket))
        return HostBatch(len(lengths), input_ids, attention_mask, tuple(parts))

    def _run_part(self, part: Part) -> torch.Tensor:
        """The part's probabilities on the device, its rows only (a view of a graph's output until the next replay)."""
        output = self._run_bucket(self.eager.to_device(part.input_ids), self.eager.to_device(part.attention_mask))
        return output[: part.count]

    def _run_parts(self, batch: HostBatch) -> torch.Tensor:
        if len(batch.parts) == 1:
            return self._run_part(batch.parts[0])
        probabilities = torch.empty((batch.count, 3), dtype=torch.float32, device=self.device)
        for part in batch.parts:
            assert part.rows is not None
            # Placed before the next replay can overwrite the graph's output (same stream).
            probabilities.index_copy_(0, self.eager.to_device(part.rows), self._run_part(part))
        return probabilities

    @torch.inference_mode()
    def launch(self, batch: HostBatch, yield_point: Callable[[], None] | None = None) -> Done | Queued:
        started = time.perf_counter()
        if yield_point is not None or not batch.parts:
            metrics.GRAPH_EAGER_BATCHES.labels(
                self.variant, "no_bucket" if yield_point is None else "preemptible"
            ).inc()
            if yield_point is None:
                probabilities = self.eager.forward_tensors(batch.input_ids, batch.attention_mask)
            else:
                paced = device_yield_point(yield_point, self.device)
                probabilities = self.eager.forward_tensors_preemptible(batch.input_ids, batch.attention_mask, paced)
            return Done(probabilities, time.perf_counter() - started)
        if not self._cuda:
            result: npt.NDArray[np.float32] = self._run_parts(batch).numpy()
            return Done(result, time.perf_counter() - started)
        stream = torch.cuda.current_stream(self.device)
        began = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        ended = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        began.record(stream)
        output = self._run_parts(batch)
        host = torch.empty(output.shape, dtype=output.dtype, pin_memory=True)
        host.copy_(output, non_blocking=True)  # before the next replay overwrites the graph's output
        ended.record(stream)
        return Queued(host, began, ended)

    def forward(self, sequences: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        """Probabilities in the service's label order, shape (n, 3)."""
        return self.launch(self.prepare(sequences)).collect()[0]

    def forward_preemptible(
        self, sequences: Sequence[Sequence[int]], yield_point: Callable[[], None]
    ) -> npt.NDArray[np.float32]:
        """Eagerly, pausing between encoder blocks: a graph cannot pause mid-way."""
        return self.launch(self.prepare(sequences), yield_point).collect()[0]

    def forward_tensors(
        self, input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        return self.launch(self._host_batch(input_ids, attention_mask)).collect()[0]

    def warm_up(self, rows: int, width: int) -> None:
        """A full-size dummy batch through the buckets (or eagerly, if it fits none)."""
        self.forward_tensors(*warm_up_inputs(rows, width, self.pad_token_id))
