"""The typed description of a variant that every protocol shows (``/variants``, the OIP model metadata)."""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field


class Describable(Protocol):
    """A variant as the engine holds it (``VariantRuntime``), or as another process last described it."""

    def describe(self) -> dict[str, Any]: ...


class VariantInfo(BaseModel):
    """Catalogue metadata and load state of one variant."""

    model_config = ConfigDict(extra="forbid")

    name: str
    base_model: str
    intermediate_task: str
    description: str
    path: str
    enabled: bool
    status: str
    error: str | None
    device: str
    dtype: str
    backend: str
    quantization: str
    execution: dict[str, Any] = Field(description="How the backend runs it (export, providers, threads).")
    accuracy_guard: dict[str, Any] | None = Field(description="The load-time comparison against the reference.")
    parameters: int | None
    attention: str | None
    max_batch_size: int
    max_batch_tokens: int
    max_seq_len: int
    max_wait_ms: float
    demo: bool
    untrained: bool
    warmup: dict[str, Any] = Field(description="Shapes and timings measured at warm-up.")


def describe(runtime: Describable) -> VariantInfo:
    """The engine's description of ``runtime``, checked against the typed model at this boundary."""
    return VariantInfo.model_validate(runtime.describe())


def untrained_variants(described: list[VariantInfo]) -> list[str]:
    """Served variants whose weights are an untrained demo's."""
    return [info.name for info in described if info.untrained and info.enabled]
