"""The ONNX Runtime backend: the checkpoint's ONNX export (float32, or int8 by dynamic quantization) in a session.

The export comes from ``onnx_export`` (cached next to the checkpoint, shared by the float32 and int8 variants of one
checkpoint); the session runs on the CPU, or on a GPU where the onnxruntime-gpu build is installed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from app.engine.backends import Backend, BackendSource, CheckpointFacts, LoadedRunner, VariantOptions, register
from app.engine.backends.onnx_export import INPUT_NAMES, ExportError, default_cache_root, ensure_export
from app.engine.backends.torch import requested_device
from app.engine.models import export_cache
from app.engine.scheduler.padding import collate
from app.engine.scheduler.runner import warm_up_inputs
from app.engine.tasks import Task
from app.engine.tasks.nli import NLI

log = logging.getLogger(__name__)


def execution_providers(device: str) -> list[Any]:
    """CUDA when the device is a GPU (onnxruntime-gpu installed), CPU always as the fallback for unsupported ops."""
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def cuda_provider_available() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


class OnnxRunner:
    """Same contract as TorchRunner: token sequences in, probabilities in the service's label order out."""

    def __init__(
        self,
        model_path: Path,
        device: str,
        threads: int,
        pad_token_id: int,
        label_permutation: Sequence[int],
        task: Task = NLI,
    ) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # The device worker runs one batch at a time and shares the cores with tokenization and HTTP; spinning
        # threads between batches would take CPU from both.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        # The CPU arena keeps the largest activations ever seen (the warm-up's full batch) for the process's life:
        # measured on the base demo, 1691 MB resident with it, 896 MB without, at the same speed (b1 6.1 vs 5.9
        # pairs/s, b4 3.7 vs 3.9, within run-to-run noise).
        options.enable_cpu_mem_arena = False
        self.session = onnxruntime.InferenceSession(str(model_path), options, providers=execution_providers(device))
        self.providers = self.session.get_providers()
        self.pad_token_id = pad_token_id
        self.task = task
        self._label_order = np.asarray(list(label_permutation), dtype=np.int64)
        declared = {node.name for node in self.session.get_inputs()}
        if declared != set(INPUT_NAMES):
            raise ExportError(f"{model_path} takes inputs {sorted(declared)}, expected {list(INPUT_NAMES)}")

    def forward(self, sequences: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        return self.forward_tensors(*collate(sequences, self.pad_token_id))

    def forward_tensors(
        self, input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        (logits,) = self.session.run(["logits"], {"input_ids": input_ids, "attention_mask": attention_mask})
        return self.task.scores_numpy(logits, self._label_order)

    def warm_up(self, rows: int, width: int) -> None:
        self.forward_tensors(*warm_up_inputs(rows, width, self.pad_token_id))


def _missing_cuda_provider() -> str | None:
    if cuda_provider_available():
        return None
    return "ONNX Runtime's CUDA provider (install onnxruntime-gpu instead of onnxruntime)"


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    platform = "onnxruntime_onnx"
    quantizations = ("none", "int8-dynamic")
    cpu_only_quantizations = ("int8-dynamic",)
    precision_note = "runs float32 exports (or int8 via quantization)"

    def resolve_device(self, spec: VariantOptions) -> torch.device:
        if spec.device == "auto":  # int8 kernels are CPU-only; CUDA needs the onnxruntime-gpu build
            gpu = torch.cuda.is_available() and spec.quantization == "none" and cuda_provider_available()
            return torch.device("cuda" if gpu else "cpu")
        return requested_device(spec, _missing_cuda_provider)

    def resolve_dtype(self, spec: VariantOptions, device: torch.device) -> torch.dtype:
        """Exported from float32 (int8 comes from quantizing that export)."""
        return torch.float32

    def source_device(self, info: CheckpointFacts) -> torch.device:
        """The float32 model is only the export's source (and the guard's reference): the CPU, while loading lasts."""
        return torch.device("cpu")

    def load(self, source: BackendSource) -> LoadedRunner:
        info = source.info
        spec = info.spec
        cache_root = default_cache_root(spec.path, source.export_cache_dir)
        artifact = ensure_export(spec.path, cache_root, lambda: source.model, spec.quantization, hold=True)
        held = artifact.path.parent  # held against pruning while this version serves

        def release() -> None:
            export_cache.release(held)

        started = time.perf_counter()
        try:
            runner = OnnxRunner(
                artifact.path,
                str(info.device),
                source.threads,
                info.pad_token_id,
                info.label_permutation,
                info.spec.task,
            )
        except BaseException:
            release()
            raise
        log.info(
            "variant %s: ONNX %s (%s, %s) on %s",
            spec.name,
            spec.quantization,
            artifact.path,
            "reused" if artifact.reused else f"exported in {artifact.seconds:.1f}s",
            runner.providers[0],
        )
        execution = {
            "providers": runner.providers,
            "export": artifact.describe(),
            "session_seconds": round(time.perf_counter() - started, 3),
        }
        return LoadedRunner(runner, execution, release)


BACKEND = register(OnnxRuntimeBackend())
