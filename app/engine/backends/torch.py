"""The torch backend: a Hugging Face checkpoint loaded offline at float32, float16 or bfloat16 and run eagerly, or
compiled / captured as CUDA graphs over fixed batch shapes (``app.engine.backends.torch_graphs``).

Torch float32 is also the reference every other way of running a checkpoint is checked against, and the model every
other backend starts from (``load_checkpoint``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch

from app.engine.backends import Backend, BackendSource, CheckpointFacts, LoadedRunner, VariantOptions, register
from app.engine.backends.torch_buckets import bucket_shapes
from app.engine.backends.torch_graphs import GRAPHS, BucketRunner
from app.engine.backends.torch_stages import TorchStages, yield_modules
from app.engine.models.store import CheckpointError, CheckpointInfo, dtype_name
from app.engine.scheduler.padding import collate
from app.engine.scheduler.runner import BatchRunner, warm_up_inputs
from app.engine.scheduler.stages import Stages, own_stages
from app.engine.tasks import Task
from app.engine.tasks.nli import NLI

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TorchRunner:
    """Collates, runs and post-processes on the model's device; one host copy back per batch."""

    def __init__(
        self,
        model: Any,
        device: torch.device,
        pad_token_id: int,
        label_permutation: Sequence[int],
        task: Task = NLI,
    ) -> None:
        self.model = model
        self.device = device
        self.pad_token_id = pad_token_id
        self.task = task
        # [probabilities | logits] columns (issue #26)
        self._label_order = torch.tensor(task.output_order(label_permutation), dtype=torch.long, device=device)
        self._pin = device.type == "cuda"

    def to_device(self, array: npt.NDArray[np.int64]) -> torch.Tensor:
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
        return self.forward_tensors_preemptible(*collate(sequences, self.pad_token_id), yield_point)

    @torch.inference_mode()
    def forward_tensors_preemptible(
        self,
        input_ids: npt.NDArray[np.int64],
        attention_mask: npt.NDArray[np.int64],
        yield_point: Callable[[], None],
    ) -> npt.NDArray[np.float32]:
        handles = [block.register_forward_pre_hook(lambda *_: yield_point()) for block in yield_modules(self.model)]
        try:
            return self.forward_tensors(input_ids, attention_mask)
        finally:
            for handle in handles:
                handle.remove()

    def probabilities(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The forward pass on device tensors: probabilities in the service's label order, on the device."""
        logits: torch.Tensor = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return self.task.scores(logits, self._label_order, torch.cat)

    @torch.inference_mode()
    def forward_tensors(
        self, input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        probabilities = self.probabilities(self.to_device(input_ids), self.to_device(attention_mask))
        result: npt.NDArray[np.float32] = probabilities.cpu().numpy()
        return result

    def warm_up(self, rows: int, width: int) -> None:
        """Run a full-size dummy batch so allocator growth and kernel selection happen before traffic."""
        self.forward_tensors(*warm_up_inputs(rows, width, self.pad_token_id))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@dataclass(frozen=True)
class LoadedCheckpoint:
    info: CheckpointInfo
    model: Any
    backend_tokenizer: Any
    pad_token_id: int
    parameters: int
    attention: str


def load_checkpoint(
    info: CheckpointInfo, dtype: torch.dtype | None = None, device: torch.device | None = None
) -> LoadedCheckpoint:
    """Load weights from the local folder only (no hub access, ever); the tokenizer came with ``info``.

    ``dtype``/``device`` override the variant's own, for the float32 reference the accuracy guard compares against
    and for backends that start from a float32 model on the CPU.
    """
    dtype = dtype or info.dtype
    device = device or info.device
    from transformers import AutoModelForSequenceClassification

    spec = info.spec
    attention = "sdpa"
    try:
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                spec.path, local_files_only=True, dtype=dtype, attn_implementation=attention
            )
        except (ValueError, ImportError):
            attention = "eager"
            model = AutoModelForSequenceClassification.from_pretrained(
                spec.path, local_files_only=True, dtype=dtype, attn_implementation=attention
            )
    except Exception as error:
        raise CheckpointError(spec.name, f"cannot load model weights from {spec.path}: {error}") from None
    model = model.to(device).eval()
    model.requires_grad_(False)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    log.info(
        "loaded variant %s: %d parameters on %s as %s (%s attention)",
        spec.name,
        parameters,
        device,
        dtype_name(dtype),
        attention,
    )
    return LoadedCheckpoint(info, model, info.backend_tokenizer, info.pad_token_id, parameters, attention)


def requested_device(spec: VariantOptions, check_cuda: Callable[[], str | None] = lambda: None) -> torch.device:
    """The device a variant names explicitly (not ``auto``), refused when it is not usable here.

    ``check_cuda``: a backend's own condition for running on a GPU, returning what is missing (or None).
    """
    device = torch.device(spec.device)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise CheckpointError(spec.name, f"device {spec.device!r} requested but CUDA is not available here")
    missing = check_cuda()
    if missing:
        raise CheckpointError(spec.name, f"device {spec.device!r} with backend {spec.backend!r} needs {missing}")
    index = device.index or 0
    if index >= torch.cuda.device_count():
        raise CheckpointError(
            spec.name, f"device {spec.device!r} requested but only {torch.cuda.device_count()} GPU(s) are visible"
        )
    return torch.device("cuda", index)


class TorchBackend(Backend):
    name = "torch"
    platform = "pytorch_transformers"
    dtypes = ("auto", "float32", "float16", "bfloat16")
    refusal_notes: ClassVar[dict[str, str]] = {
        "int8-dynamic": "torch's eager dynamic quantization, torch.ao, is deprecated and not offered"
    }
    serves_source_model = True
    graphs = GRAPHS
    cuda_only_graphs = ("cuda-graphs",)

    def resolve_device(self, spec: VariantOptions) -> torch.device:
        if spec.device == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            device = requested_device(spec)
        if spec.graph in self.cuda_only_graphs and device.type != "cuda":
            raise CheckpointError(
                spec.name,
                f"graph {spec.graph!r} needs a CUDA device and this variant runs on {device} (no GPU here); "
                "set graph = 'compile' or 'eager'",
            )
        return device

    def resolve_dtype(self, spec: VariantOptions, device: torch.device) -> torch.dtype:
        """``auto``: float16 on a GPU (tensor cores), float32 on the CPU (no fast half-precision kernels there)."""
        if spec.dtype == "auto":
            return torch.float16 if device.type == "cuda" else torch.float32
        return DTYPES[spec.dtype]

    def is_reference(self, info: CheckpointFacts) -> bool:
        return info.spec.quantization == "none" and info.dtype == torch.float32

    def stages(self, runner: BatchRunner, copy_stream: torch.cuda.Stream | None = None) -> Stages:
        """A torch runner's forward pass split so the worker overlaps copies, compute and answers (a compiled or
        captured runner stages itself)."""
        if isinstance(runner, TorchRunner):
            return TorchStages(runner, copy_stream)
        return own_stages(runner, copy_stream)

    def load(self, source: BackendSource) -> LoadedRunner:
        info = source.info
        model = source.model.to(info.dtype)  # a no-op unless the float32 reference was loaded for the guard
        runner = TorchRunner(model, info.device, info.pad_token_id, info.label_permutation, info.spec.task)
        spec = info.spec
        if spec.graph == "eager":
            return LoadedRunner(runner)
        shapes = bucket_shapes(spec.max_batch_size, spec.max_batch_tokens, spec.max_seq_len, spec.graph_buckets)
        graphed = BucketRunner(runner, spec.graph, shapes, spec.name)
        try:
            graphed.build()  # before the guard checks it and before the variant is ready
        except Exception as error:
            raise CheckpointError(
                spec.name, f"cannot build graph {spec.graph!r}: {type(error).__name__}: {error}"
            ) from error
        return LoadedRunner(graphed, {"graph": graphed.describe()})


BACKEND = register(TorchBackend())
