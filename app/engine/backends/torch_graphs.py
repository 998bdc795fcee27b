"""Less Python per batch: the torch model compiled (``graph = "compile"``) or captured as CUDA graphs
(``graph = "cuda-graphs"``) over a small fixed set of (rows, padded length) buckets, all built before the variant is
ready.

Which buckets to build, and which of them a batch runs in, is ``app.engine.backends.torch_buckets``; a batch that fits
no bucket (whole or split) runs eagerly and is counted in ``xnli_graph_eager_batches_total{reason="no_bucket"}``.

Preemption: a compiled or captured forward pass runs to its end, it cannot pause between encoder blocks. So batches
the device worker runs preemptibly (batch-priority and shadow batches, which are handed a ``yield_point``) run eagerly
with their pauses (``reason="preemptible"``), paced on CUDA
(``app.engine.scheduler.stages.device_yield_point``); interactive batches run on the buckets.

``compile`` uses ``torch.compile`` with ``mode="default"`` and static shapes, one specialisation per bucket (on CUDA
too: "reduce-overhead" keeps its CUDA graphs per Python thread, and the engine builds a variant on its loading thread
but serves it from the device worker's). ``cuda-graphs`` captures the eager model once per bucket on a side stream
after a few warm-up passes, with static input buffers and one memory pool shared by the variant's graphs (replayed one
at a time on one stream, as captured); CUDA only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from app import metrics
from app.engine.backends.torch_buckets import (
    BucketPlan,
    HostBatch,
    Part,
    Shape,
)
from app.engine.scheduler.runner import warm_up_inputs
from app.engine.scheduler.stages import Done, Queued, device_yield_point

__all__ = ["GRAPHS", "BucketRunner", "CapturedBucket", "compile_settings"]

log = logging.getLogger(__name__)

GRAPHS = ("eager", "compile", "cuda-graphs")
CAPTURE_WARM_UP_PASSES = 3
Probabilities = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


_COMPILING = threading.Lock()
_compiled_buckets = 0  # bucket specialisations compiled in this process so far


@contextmanager
def compile_settings(buckets: int) -> Iterator[None]:
    """Dynamo's recompile limits raised for compiling ``buckets`` more specialisations, restored after.

    Every variant's buckets are specialisations of one code object (``probabilities``), so the limits must cover all
    compiled in the process so far: they are checked only when code is compiled, never when compiled code runs, so
    the defaults are put back once a variant is built. Dynamo's settings (and the ``fail_on_recompile`` stance a
    build checks its buckets under) are process-wide: builds hold a lock, so no two see each other's."""
    global _compiled_buckets
    dynamo = torch._dynamo.config
    with _COMPILING:
        previous = dynamo.recompile_limit, dynamo.accumulated_recompile_limit
        _compiled_buckets += buckets
        dynamo.recompile_limit = previous[0] + _compiled_buckets
        dynamo.accumulated_recompile_limit = previous[1] + _compiled_buckets
        try:
            yield
        finally:
            dynamo.recompile_limit, dynamo.accumulated_recompile_limit = previous


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
        self.buckets = BucketPlan(shapes, self.pad_token_id)
        self.shapes = self.buckets.shapes
        self.preemptible = True
        self._cuda = self.device.type == "cuda"
        if graph == "cuda-graphs" and not self._cuda:
            raise ValueError(f"graph 'cuda-graphs' needs a CUDA device; this variant runs on {self.device}")
        self._compiled: Probabilities | None = None
        self._captured: dict[Shape, CapturedBucket] = {}
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
            with compile_settings(len(self.shapes)):
                self._compiled = torch.compile(self.eager.probabilities, mode="default", dynamic=False)
                for shape in reversed(self.shapes):
                    self._run_bucket(*self._dummy(shape))
                with torch.compiler.set_stance("fail_on_recompile"):  # each bucket's code holds: none recompiles
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
        return self.buckets.bucket_for(rows, width)

    def plan(self, lengths: npt.NDArray[np.int64]) -> list[tuple[npt.NDArray[np.int64] | None, Shape]]:
        return self.buckets.plan(lengths)

    def _run_bucket(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        shape = (int(input_ids.shape[0]), int(input_ids.shape[1]))
        if self._compiled is not None:
            return self._compiled(input_ids, attention_mask)
        return self._captured[shape].replay(input_ids, attention_mask)

    def prepare(self, sequences: Sequence[Sequence[int]]) -> HostBatch:
        return self.buckets.prepare(sequences)

    def _run_part(self, part: Part) -> torch.Tensor:
        """The part's probabilities on the device, its rows only (a view of a graph's output until the next replay)."""
        output = self._run_bucket(self.eager.to_device(part.input_ids), self.eager.to_device(part.attention_mask))
        return output[: part.count]

    def _run_parts(self, batch: HostBatch) -> torch.Tensor:
        if len(batch.parts) == 1:
            return self._run_part(batch.parts[0])
        probabilities: torch.Tensor | None = None
        for part in batch.parts:
            assert part.rows is not None
            rows = self._run_part(part)
            if probabilities is None:  # as wide as the runner's rows: [probabilities | logits] (issue #26)
                probabilities = torch.empty((batch.count, rows.shape[1]), dtype=torch.float32, device=self.device)
            # Placed before the next replay can overwrite the graph's output (same stream).
            probabilities.index_copy_(0, self.eager.to_device(part.rows), rows)
        assert probabilities is not None
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
        return self.launch(self.buckets.host_batch(input_ids, attention_mask)).collect()[0]

    def warm_up(self, rows: int, width: int) -> None:
        """A full-size dummy batch through the buckets (or eagerly, if it fits none)."""
        self.forward_tensors(*warm_up_inputs(rows, width, self.pad_token_id))
