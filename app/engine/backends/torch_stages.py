"""A torch runner's forward pass in stages (see ``app.engine.scheduler.stages``): collate, then on CUDA a pinned,
non-blocking host-to-device copy on a copy stream; the forward pass queued on the compute stream behind that copy;
the probabilities copied back into pinned memory behind it. On CPU the same operations in the same order as
``TorchRunner.forward``, so results are identical whichever way a batch ran.

Yield points on CUDA are paced (``device_yield_point``): the hooks fire when a block's kernels are queued, so without
pacing the host would queue a whole background batch before an interactive one could be launched behind it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from app.engine.scheduler.padding import collate
from app.engine.scheduler.stages import Done, Launched, Queued, YieldPoint, device_yield_point


def encoder_layers(model: Any) -> list[torch.nn.Module]:
    """The transformer layers of a Hugging Face encoder (``base_model.encoder.layer``), or none if it has another
    layout: such a model runs its forward passes whole."""
    layers = getattr(getattr(getattr(model, "base_model", None), "encoder", None), "layer", None)
    return list(layers) if isinstance(layers, torch.nn.ModuleList) else []


def yield_modules(model: Any) -> list[torch.nn.Module]:
    """Where a preemptible forward pass pauses: before each block of each encoder layer (attention, feed-forward in,
    feed-forward out for XLM-R), about a third of a layer apart."""
    return [block for layer in encoder_layers(model) for block in (list(layer.children()) or [layer])]


class StagedRunner(Protocol):
    """What the stages use of a torch runner (``app.engine.backends.torch.TorchRunner``)."""

    model: Any
    device: torch.device
    pad_token_id: int

    def probabilities(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


class _OnDevice:
    __slots__ = ("attention_mask", "input_ids", "ready")

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, ready: torch.cuda.Event | None) -> None:
        self.input_ids = input_ids
        self.attention_mask = attention_mask
        self.ready = ready  # recorded on the copy stream once both tensors are on the device


class TorchStages:
    """A TorchRunner's forward pass in stages."""

    preemptible = True

    def __init__(self, runner: StagedRunner, copy_stream: torch.cuda.Stream | None = None) -> None:
        self.runner = runner
        self._cuda = runner.device.type == "cuda"
        self._copy_stream = copy_stream if self._cuda else None

    def prepare(self, sequences: Sequence[Sequence[int]]) -> _OnDevice:
        input_ids, attention_mask = collate(sequences, self.runner.pad_token_id)
        if not self._cuda:
            return _OnDevice(torch.from_numpy(input_ids), torch.from_numpy(attention_mask), None)
        device = self.runner.device
        with torch.cuda.stream(self._copy_stream):  # None: the current stream (no overlap, still correct)
            ids = torch.from_numpy(input_ids).pin_memory().to(device, non_blocking=True)
            mask = torch.from_numpy(attention_mask).pin_memory().to(device, non_blocking=True)
            ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ready.record()
        return _OnDevice(ids, mask, ready)

    @torch.inference_mode()
    def launch(self, prepared: _OnDevice, yield_point: YieldPoint | None = None) -> Launched:
        model = self.runner.model
        handles = []
        if yield_point is not None:
            pause = device_yield_point(yield_point, self.runner.device)
            handles = [block.register_forward_pre_hook(lambda *_: pause()) for block in yield_modules(model)]
        try:
            if not self._cuda:
                started = time.perf_counter()
                probabilities = self.runner.probabilities(prepared.input_ids, prepared.attention_mask)
                return Done(probabilities.numpy(), time.perf_counter() - started)
            stream = torch.cuda.current_stream(self.runner.device)
            if prepared.ready is not None:
                stream.wait_event(prepared.ready)
            # Made on the copy stream, used on this one: keep the allocator from reusing them before it is done.
            prepared.input_ids.record_stream(stream)
            prepared.attention_mask.record_stream(stream)
            began = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            ended = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            began.record(stream)
            probabilities = self.runner.probabilities(prepared.input_ids, prepared.attention_mask)
            host = torch.empty(probabilities.shape, dtype=probabilities.dtype, pin_memory=True)
            host.copy_(probabilities, non_blocking=True)
            ended.record(stream)
            return Queued(host, began, ended)
        finally:
            for handle in handles:
                handle.remove()
