"""Backends: the ways a checkpoint can be run (torch, ONNX Runtime, ...), one module each behind ``Backend``.

A backend module declares what the catalogue may ask of it (quantizations, dtypes, device types, and the message for
each refusal), how it picks a device and a precision, whether and how closely it is checked against the reference
(torch float32) before serving, how it turns a checkpoint into a runner, and the platform name the Open Inference
Protocol reports. The catalogue validates ``backend = "..."`` against this registry and the loader
(``app.engine.backends.preparation``) calls only this interface, so adding a backend (TensorRT, OpenVINO) is one new
module that ends with ``register(ItsBackend())`` and one line in ``BUILT_IN`` below (or a ``register`` call by
whoever imports it first).

This module sits below the catalogue and the checkpoint inspector (both ask it questions), so it names their types
only structurally (``VariantOptions``, ``CheckpointFacts``) and imports no backend: built-in backend modules are
imported the first time one is asked for by name, as plug-ins are (importing this stays light: no torch, no ONNX
Runtime).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

if TYPE_CHECKING:
    import torch

    from app.engine.scheduler.runner import BatchRunner, WarmableRunner
    from app.engine.scheduler.stages import Stages
    from app.engine.tasks import Task

__all__ = [
    "BUILT_IN",
    "Backend",
    "BackendSource",
    "CheckpointFacts",
    "Declaration",
    "GuardTolerances",
    "LoadedRunner",
    "VariantOptions",
    "all_backends",
    "backend_names",
    "get_backend",
    "offered",
    "register",
    "unregister",
]

# The backends this project ships: catalogue name -> the module that registers it when imported.
BUILT_IN: Mapping[str, str] = {
    "torch": "app.engine.backends.torch",
    "onnxruntime": "app.engine.backends.onnxruntime",
}


class ServingChoice(Protocol):
    """The settings a backend judges (``[defaults]`` or a variant of the catalogue)."""

    @property
    def backend(self) -> str: ...
    @property
    def quantization(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def graph(self) -> str: ...


class VariantOptions(ServingChoice, Protocol):
    """What a backend reads of a catalogue variant (``catalogue.VariantSpec``)."""

    @property
    def name(self) -> str: ...
    @property
    def path(self) -> Path: ...
    @property
    def accuracy_guard(self) -> bool: ...
    @property
    def min_top1_agreement(self) -> float: ...
    @property
    def max_probability_diff(self) -> float: ...
    @property
    def task(self) -> Task: ...
    @property
    def max_batch_size(self) -> int: ...
    @property
    def max_batch_tokens(self) -> int: ...
    @property
    def max_seq_len(self) -> int: ...
    @property
    def graph_buckets(self) -> int: ...


class CheckpointFacts(Protocol):
    """What a backend reads of an inspected checkpoint (``model_store.CheckpointInfo``)."""

    @property
    def spec(self) -> VariantOptions: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def dtype(self) -> torch.dtype: ...
    @property
    def label_permutation(self) -> tuple[int, ...]: ...
    @property
    def pad_token_id(self) -> int: ...


@dataclass(frozen=True, slots=True)
class GuardTolerances:
    """How closely a variant must answer like torch float32 on the probe set before it may serve."""

    min_top1_agreement: float
    max_probability_diff: float


@dataclass(frozen=True, slots=True)
class BackendSource:
    """What the loader hands a backend: the inspected checkpoint, its torch model (float32 when the variant is
    guarded, else at the backend's ``source_dtype``) on the backend's ``source_device``, and the process's knobs."""

    info: CheckpointFacts
    model: Any
    threads: int
    export_cache_dir: Path | None


Declaration = Literal["quantizations", "dtypes", "graphs"]


def _nothing_to_release() -> None:
    return None


@dataclass(slots=True)
class LoadedRunner:
    """A backend's result: the runner that serves, what `/variants` shows under ``execution``, and what to undo if
    this version never serves (an export it holds against pruning)."""

    runner: WarmableRunner
    execution: dict[str, Any] = field(default_factory=dict)
    release: Callable[[], None] = _nothing_to_release


class Backend(ABC):
    """One way of running a checkpoint. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]
    """The catalogue's ``backend`` value."""
    platform: ClassVar[str]
    """What the Open Inference Protocol's model metadata reports as ``platform``."""
    quantizations: ClassVar[tuple[str, ...]] = ("none",)
    dtypes: ClassVar[tuple[str, ...]] = ("auto", "float32")
    device_types: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    cpu_only_quantizations: ClassVar[tuple[str, ...]] = ()
    graphs: ClassVar[tuple[str, ...]] = ("eager",)
    """How the forward pass may be run: eagerly, or compiled / captured over a set of (rows, length) buckets."""
    cuda_only_graphs: ClassVar[tuple[str, ...]] = ()
    precision_note: ClassVar[str] = "runs float32"
    """Completes "backend 'x' ..." when a dtype is refused."""
    refusal_notes: ClassVar[Mapping[str, str]] = {}
    """Why a quantization another backend offers is not offered here, by quantization."""
    serves_source_model: ClassVar[bool] = False
    """Whether the runner keeps serving the torch model it was given (else the loader frees it after loading)."""

    def options_problem(self, options: ServingChoice) -> str | None:
        """Why the catalogue may not ask this of this backend, in words naming the setting to change; None if it may."""
        quantization, dtype = options.quantization, options.dtype
        device_type = options.device.partition(":")[0]
        if quantization not in self.quantizations:
            note = self.refusal_notes.get(quantization)
            return f"quantization {quantization!r} needs backend = {_offering('quantizations', quantization)}" + (
                f" ({note})" if note else ""
            )
        if dtype not in self.dtypes:
            return (
                f"backend {self.name!r} {self.precision_note}; dtype {dtype!r} is offered by backend "
                f"{_offering('dtypes', dtype)}"
            )
        if options.graph not in self.graphs:
            return f"graph {options.graph!r} needs backend = {_offering('graphs', options.graph)}"
        if device_type != "auto" and device_type not in self.device_types:
            return f"backend {self.name!r} runs on {' or '.join(self.device_types)} only; device {options.device!r}"
        if quantization in self.cpu_only_quantizations and device_type == "cuda":
            return f"quantization {quantization!r} runs on CPU only; set device = 'cpu' or 'auto'"
        if options.graph in self.cuda_only_graphs and device_type == "cpu":
            return f"graph {options.graph!r} runs on CUDA only; set device = 'cuda' or 'auto', or another graph"
        return None

    @abstractmethod
    def resolve_device(self, spec: VariantOptions) -> torch.device:
        """Where the variant runs; a CheckpointError if the device it asks for is not usable here."""

    @abstractmethod
    def resolve_dtype(self, spec: VariantOptions, device: torch.device) -> torch.dtype:
        """The precision the variant reports (and, for torch, computes in)."""

    def is_reference(self, info: CheckpointFacts) -> bool:
        """Whether this variant is torch float32 itself, the reference every other way of running is checked against."""
        return False

    def guard_tolerances(self, info: CheckpointFacts) -> GuardTolerances | None:
        """The tolerances of the check against the reference, or None when the variant is not checked."""
        spec = info.spec
        if not spec.accuracy_guard or self.is_reference(info):
            return None
        return GuardTolerances(spec.min_top1_agreement, spec.max_probability_diff)

    def source_device(self, info: CheckpointFacts) -> torch.device:
        """Where the loader puts the torch model this backend starts from (the guard's reference runs there too)."""
        return info.device

    def source_dtype(self, info: CheckpointFacts) -> torch.dtype:
        """The precision of that torch model when the variant is not guarded (guarded: always float32)."""
        return info.dtype

    def stages(self, runner: BatchRunner, copy_stream: torch.cuda.Stream | None = None) -> Stages:
        """How the device worker runs a batch of this backend's ``runner`` (``app.engine.scheduler.stages``): by
        default as the runner stages itself, else its whole forward pass at launch. ``copy_stream``: the worker's
        stream for host-to-device copies on CUDA (None elsewhere)."""
        from app.engine.scheduler.stages import own_stages  # the scheduler stays unimported until a variant loads

        return own_stages(runner, copy_stream)

    @abstractmethod
    def load(self, source: BackendSource) -> LoadedRunner:
        """Turn the checkpoint into the runner that serves the variant."""


_registry: dict[str, Backend] = {}


def register(backend: Backend, *, replace: bool = False) -> Backend:
    """Make ``backend`` available to catalogues under ``backend.name``."""
    if not replace and _registry.get(backend.name, backend) is not backend:
        raise ValueError(f"a backend named {backend.name!r} is registered already")
    _registry[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    _registry.pop(name, None)


def backend_names() -> list[str]:
    """Every backend a catalogue may name: the built-in ones, then the registered plug-ins."""
    return [*BUILT_IN, *(name for name in _registry if name not in BUILT_IN)]


def get_backend(name: str) -> Backend:
    if name not in _registry and name in BUILT_IN:
        importlib.import_module(BUILT_IN[name])
    try:
        return _registry[name]
    except KeyError:
        raise KeyError(f"unknown backend {name!r}; the backends are {', '.join(backend_names())}") from None


def all_backends() -> list[Backend]:
    return [get_backend(name) for name in backend_names()]


def _offering(declaration: Declaration, value: str) -> str:
    """The backends whose ``declaration`` (quantizations, dtypes) includes ``value``, as a catalogue would name them."""
    names = [backend.name for backend in all_backends() if value in getattr(backend, declaration)]
    return " or ".join(repr(name) for name in names) or "(none)"


def offered(declaration: Declaration) -> list[str]:
    """Every value of ``declaration`` that some backend offers, in the order the backends declare them."""
    return list(dict.fromkeys(value for backend in all_backends() for value in getattr(backend, declaration)))
