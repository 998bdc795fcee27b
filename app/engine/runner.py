"""Runs one batch of token sequences through a sequence-classification model and returns label probabilities."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from app.engine.catalogue import PAD_MULTIPLE


def padded_length(longest: int, multiple: int = PAD_MULTIPLE) -> int:
    """Round up so tensor-core kernels see aligned shapes (and the batcher charges what actually runs)."""
    return -(-longest // multiple) * multiple


class BatchRunner(Protocol):
    """What the batcher needs from a backend: token sequences in, (n, 3) probabilities in service order out."""

    def forward(self, sequences: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]: ...


class PreemptibleRunner(BatchRunner, Protocol):
    """A backend that calls ``yield_point`` between the layers of a forward pass, where the device worker may run
    more urgent batches before the rest of this one."""

    def forward_preemptible(
        self, sequences: Sequence[Sequence[int]], yield_point: Callable[[], None]
    ) -> npt.NDArray[np.float32]: ...


def encoder_layers(model: Any) -> list[torch.nn.Module]:
    """The transformer layers of a Hugging Face encoder (``base_model.encoder.layer``), or none if it has another
    layout: such a model runs its forward passes whole."""
    layers = getattr(getattr(getattr(model, "base_model", None), "encoder", None), "layer", None)
    return list(layers) if isinstance(layers, torch.nn.ModuleList) else []


def yield_modules(model: Any) -> list[torch.nn.Module]:
    """Where a preemptible forward pass pauses: before each block of each encoder layer (attention, feed-forward in,
    feed-forward out for XLM-R), about a third of a layer apart."""
    return [block for layer in encoder_layers(model) for block in (list(layer.children()) or [layer])]


class WarmableRunner(BatchRunner, Protocol):
    """A backend the engine loads: it can also run a full-size dummy batch before traffic arrives."""

    def warm_up(self, rows: int, width: int) -> None: ...


def collate(
    sequences: Sequence[Sequence[int]], pad_token_id: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Right-pad into one (n, L) block with a single masked scatter instead of a Python loop per row."""
    lengths = np.fromiter((len(sequence) for sequence in sequences), dtype=np.int64, count=len(sequences))
    width = padded_length(int(lengths.max()))
    mask = np.arange(width, dtype=np.int64)[None, :] < lengths[:, None]
    input_ids = np.full((len(sequences), width), pad_token_id, dtype=np.int64)
    input_ids[mask] = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
    return input_ids, mask.astype(np.int64)


def warm_up_inputs(rows: int, width: int, pad_token_id: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """A full (rows, width) batch of non-pad tokens: the most work a batch of that shape can ask for."""
    filler = 0 if pad_token_id != 0 else 1
    return np.full((rows, width), filler, dtype=np.int64), np.ones((rows, width), dtype=np.int64)


class TorchRunner:
    """Collates, runs and post-processes on the model's device; one host copy back per batch."""

    def __init__(
        self,
        model: Any,
        device: torch.device,
        pad_token_id: int,
        label_permutation: Sequence[int],
    ) -> None:
        self.model = model
        self.device = device
        self.pad_token_id = pad_token_id
        self._permutation = torch.tensor(list(label_permutation), dtype=torch.long, device=device)
        self._pin = device.type == "cuda"

    def _to_device(self, array: npt.NDArray[np.int64]) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self._pin:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    @torch.inference_mode()
    def forward(self, sequences: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        """Probabilities in the service's label order, shape (n, 3)."""
        input_ids, attention_mask = collate(sequences, self.pad_token_id)
        return self.forward_tensors(input_ids, attention_mask)

    @torch.inference_mode()
    def forward_preemptible(
        self, sequences: Sequence[Sequence[int]], yield_point: Callable[[], None]
    ) -> npt.NDArray[np.float32]:
        """As ``forward``, calling ``yield_point`` before each block of each encoder layer (on CUDA: before its kernels
        are queued). Hooks live only for this call; a forward pass run from inside ``yield_point`` triggers them too,
        so ``yield_point`` must ignore calls made while it runs."""
        handles = [block.register_forward_pre_hook(lambda *_: yield_point()) for block in yield_modules(self.model)]
        try:
            return self.forward(sequences)
        finally:
            for handle in handles:
                handle.remove()

    @torch.inference_mode()
    def forward_tensors(
        self, input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        logits = self.model(input_ids=self._to_device(input_ids), attention_mask=self._to_device(attention_mask)).logits
        probabilities = torch.softmax(logits.float(), dim=-1).index_select(1, self._permutation)
        result: npt.NDArray[np.float32] = probabilities.cpu().numpy()
        return result

    def warm_up(self, rows: int, width: int) -> None:
        """Run a full-size dummy batch so allocator growth and kernel selection happen before traffic."""
        self.forward_tensors(*warm_up_inputs(rows, width, self.pad_token_id))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
