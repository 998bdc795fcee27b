"""The variant catalogue (``model_store/variants.toml``): which checkpoints to serve and how.

A variant is a checkpoint plus how it is run. ``[defaults]`` holds serving knobs every variant inherits; each
``[[variant]]`` table may override them. Every problem is reported as one message naming the file and the variant.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from app.engine import backends
from app.engine.scheduler.padding import padded_length
from app.engine.tasks import Task
from app.engine.tasks.nli import NLI
from app.engine.tasks.zero_shot import template_problem  # issue #26

VARIANT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def runtime_label(metadata: Mapping[str, Any]) -> str:
    """How a variant computes, for reports that read `/variants`: "torch float32", "onnxruntime int8-dynamic"."""
    backend = metadata.get("backend", "torch")
    quantization = metadata.get("quantization", "none")
    return f"{backend} {quantization if quantization not in (None, 'none') else metadata.get('dtype')}"


class CatalogueError(ValueError):
    """The catalogue cannot be used; the message says where and why."""


class ServingOptions(BaseModel):
    """Knobs that decide how a variant runs; ``[defaults]`` and each variant share this shape."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = "auto"
    dtype: str = Field("auto", description="Precision: auto, float32, float16 or bfloat16, as the backend offers.")
    max_batch_size: int = Field(32, ge=1, le=4096)
    max_batch_tokens: int = Field(8192, ge=8)
    max_seq_len: int = Field(256, ge=8, le=8192)
    max_wait_ms: float = Field(0.0, ge=0.0, le=10_000.0)
    max_queue_pairs: int = Field(
        1024, ge=1, description="Pairs that may wait; requests beyond get 429, a request larger than this 413."
    )
    max_padding_ratio: float = Field(
        1.0, gt=0.0, le=1.0, description="Largest share of padding a batch may carry (1 = no cap)."
    )
    max_background_batch_ms: float = Field(
        10.0,
        gt=0.0,
        le=60_000.0,
        description="Longest estimated device time of a batch-priority or shadow batch: an interactive request that "
        "arrives while one runs waits at most this long for it.",
    )
    backend: str = Field(
        "torch", description="What runs the checkpoint (app.engine.backends): torch, or ONNX Runtime on an export."
    )
    quantization: str = Field("none", description="int8-dynamic: ONNX Runtime int8 linear layers (CPU).")
    graph: str = Field(
        "eager",
        description="eager, or (torch) compile: torch.compile, or cuda-graphs: CUDA graphs, each over a fixed set of "
        "(rows, padded length) buckets built before the variant is ready; batches that fit none run eagerly.",
    )
    graph_buckets: int = Field(32, ge=1, le=256, description="Most (rows, length) buckets a graph variant builds.")
    accuracy_guard: bool = Field(
        True, description="Compare every non-reference variant (not torch fp32) with torch fp32 at load."
    )
    min_top1_agreement: float = Field(
        0.95, ge=0.0, le=1.0, description="Guard: share of probe pairs whose top label equals torch fp32's."
    )
    max_probability_diff: float = Field(
        0.10, ge=0.0, le=1.0, description="Guard: largest |p - p_fp32| over probe pairs and labels."
    )
    enabled: bool = True

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")

    @field_validator("backend")
    @classmethod
    def _registered_backend(cls, value: str) -> str:
        if value not in backends.backend_names():
            raise ValueError(f"unknown backend {value!r}; the backends are {', '.join(backends.backend_names())}")
        return value

    @field_validator("quantization", "dtype", "graph")
    @classmethod
    def _offered_by_a_backend(cls, value: str, info: ValidationInfo) -> str:
        declarations: dict[str | None, backends.Declaration] = {"quantization": "quantizations", "graph": "graphs"}
        offered = backends.offered(declarations.get(info.field_name, "dtypes"))
        if value not in offered:
            raise ValueError(f"{info.field_name} {value!r} is offered by no backend; offered: {', '.join(offered)}")
        return value

    @model_validator(mode="after")
    def _one_full_sequence_fits_a_batch(self) -> ServingOptions:
        longest = padded_length(self.max_seq_len)
        if self.max_batch_tokens < longest:
            raise ValueError(
                f"max_batch_tokens ({self.max_batch_tokens}) must hold one sequence of max_seq_len "
                f"{self.max_seq_len} padded to {longest}"
            )
        return self

    @model_validator(mode="after")
    def _backend_offers_the_options(self) -> ServingOptions:
        problem = backends.get_backend(self.backend).options_problem(self)
        if problem:
            raise ValueError(problem)
        return self


class FaultSpec(BaseModel):
    """Faults injected into a variant's runner, for resilience tests; refused unless fault injection is enabled."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    delay_ms: float = Field(0.0, ge=0.0, description="Extra time added to every forward pass.")
    fail_every: int = Field(0, ge=0, description="Every Nth forward pass raises (1 = all of them).")
    oom_above: int = Field(0, ge=0, description="Batches of more than N pairs raise an out-of-memory error.")
    kill_after: int = Field(0, ge=0, description="The Nth forward pass kills the device worker.")


class VariantSpec(ServingOptions):
    """One deployable variant: metadata shown to users plus resolved serving options."""

    name: str = Field(pattern=VARIANT_NAME_PATTERN)
    path: Path
    base_model: str = "unknown"
    intermediate_task: str = "none"
    description: str = ""
    faults: FaultSpec | None = None
    # --- issue #26: zero-shot hypothesis templates per language code (app.engine.tasks.zero_shot) ----------------
    zero_shot_templates: dict[str, str] = Field(
        default_factory=dict,
        description='Zero-shot hypothesis template per language code (e.g. fr = "Ce texte parle de {}."): '
        "between a request's own template and the built-in default for the request's language.",
    )

    @field_validator("zero_shot_templates")
    @classmethod
    def _check_templates(cls, templates: dict[str, str]) -> dict[str, str]:
        checked: dict[str, str] = {}
        for language, template in templates.items():
            code = language.strip().lower().replace("_", "-")
            if not 1 <= len(code) <= 35 or not code.replace("-", "").isalnum():
                raise ValueError(f"zero_shot_templates: {language!r} is not a language code (e.g. fr, pt-br)")
            problem = template_problem(template)
            if problem is not None:
                raise ValueError(f"zero_shot_templates[{language!r}] {problem}: {template!r}")
            checked[code] = template
        return checked

    # --- end of issue #26 block --------------------------------------------------------------------------------

    @property
    def task(self) -> Task:
        """What the variant serves: NLI for every catalogue entry (a catalogue key will choose once a second task
        exists)."""
        return NLI


class ShadowSpec(BaseModel):
    """``[[traffic.shadow]]``: a sampled share of ``primary``'s pairs is also run on ``candidate`` and compared."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    primary: str = Field(description="The variant that answers the client.")
    candidate: str = Field(description="Also computes the sampled pairs; never answers the client.")
    fraction: float = Field(gt=0.0, le=1.0, description="Share of the primary's pairs sent to the candidate.")


class TrafficSpec(BaseModel):
    """``[traffic]``: how requests that name no variant are split, and which variants shadow which."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    split: dict[str, float] = Field(
        default_factory=dict, description="Weight of each variant for requests without `variant` (any positive scale)."
    )
    shadow: tuple[ShadowSpec, ...] = ()

    @field_validator("split")
    @classmethod
    def _positive_weights(cls, split: dict[str, float]) -> dict[str, float]:
        bad = {name: weight for name, weight in split.items() if not (math.isfinite(weight) and weight > 0)}
        if bad:
            raise ValueError(f"split weights must be positive numbers, got {bad}")
        return split

    def restricted_to(self, served: set[str]) -> TrafficSpec:
        """The part of the traffic a replica serving only ``served`` can carry out."""
        return TrafficSpec(
            split={name: weight for name, weight in self.split.items() if name in served},
            shadow=tuple(shadow for shadow in self.shadow if {shadow.primary, shadow.candidate} <= served),
        )


class Catalogue(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: Path
    default_variant: str
    variants: tuple[VariantSpec, ...]
    traffic: TrafficSpec = TrafficSpec()

    def get(self, name: str) -> VariantSpec:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(piece) for piece in item["loc"]) or "(table)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def load_catalogue(path: Path, only: list[str] | None = None) -> Catalogue:
    """Parse and check a catalogue file; ``only`` keeps a subset of variants (a replica serving part of it)."""
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogueError(f"catalogue {path}: file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise CatalogueError(f"catalogue {path}: not valid TOML: {error}") from None

    unknown_keys = sorted(set(raw) - {"defaults", "variant", "default_variant", "traffic"})
    if unknown_keys:
        raise CatalogueError(f"catalogue {path}: unknown top-level keys {unknown_keys}")
    defaults_table = raw.get("defaults", {})
    try:
        defaults = ServingOptions.model_validate(defaults_table)
    except ValidationError as error:
        raise CatalogueError(f"catalogue {path}: [defaults]: {_describe(error)}") from None

    tables = raw.get("variant", [])
    if not isinstance(tables, list) or not tables:
        raise CatalogueError(f"catalogue {path}: no [[variant]] tables")
    variants: list[VariantSpec] = []
    for position, table in enumerate(tables, start=1):
        label = f"variant #{position}"
        if isinstance(table, dict) and isinstance(table.get("name"), str):
            label = f"variant {table['name']!r}"
        try:
            merged = {**defaults.model_dump(exclude_unset=True), **table}
            spec = VariantSpec.model_validate(merged)
        except ValidationError as error:
            raise CatalogueError(f"catalogue {path}: {label}: {_describe(error)}") from None
        if not spec.path.is_absolute():
            spec = spec.model_copy(update={"path": (path.parent / spec.path).resolve()})
        variants.append(spec)

    names = [variant.name for variant in variants]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise CatalogueError(f"catalogue {path}: variant names must be unique, repeated: {duplicates}")

    if only:
        missing = [name for name in only if name not in names]
        if missing:
            raise CatalogueError(f"catalogue {path}: XNLI_SERVE_VARIANTS names unknown variants {missing}")
        variants = [variant.model_copy(update={"enabled": True}) for variant in variants if variant.name in only]

    enabled = [variant.name for variant in variants if variant.enabled]
    if not enabled:
        raise CatalogueError(f"catalogue {path}: no enabled variant")
    default_variant = raw.get("default_variant", enabled[0])
    if only and default_variant not in enabled:
        default_variant = enabled[0]
    if default_variant not in enabled:
        raise CatalogueError(
            f"catalogue {path}: default_variant {default_variant!r} is not an enabled variant (enabled: {enabled})"
        )
    traffic = _load_traffic(path, raw.get("traffic", {}), variants, restrict=bool(only))
    return Catalogue(source=path, default_variant=default_variant, variants=tuple(variants), traffic=traffic)


def _load_traffic(path: Path, table: object, variants: list[VariantSpec], restrict: bool) -> TrafficSpec:
    """Parse ``[traffic]``; every variant it names must be an enabled variant of the catalogue.

    A replica serving a subset (``XNLI_SERVE_VARIANTS``) keeps the split among the variants it serves and the shadows
    whose primary and candidate it serves both."""
    try:
        traffic = TrafficSpec.model_validate(table)
    except ValidationError as error:
        raise CatalogueError(f"catalogue {path}: [traffic]: {_describe(error)}") from None
    known = {variant.name for variant in variants}
    enabled = {variant.name for variant in variants if variant.enabled}
    if restrict:
        traffic = traffic.restricted_to(enabled)

    def check(where: str, name: str) -> None:
        if name not in known:
            raise CatalogueError(f"catalogue {path}: [traffic] {where} names unknown variant {name!r}")
        if name not in enabled:
            raise CatalogueError(f"catalogue {path}: [traffic] {where} names disabled variant {name!r}")

    for name in traffic.split:
        check("split", name)
    seen: set[tuple[str, str]] = set()
    for position, shadow in enumerate(traffic.shadow, start=1):
        where = f"[[traffic.shadow]] #{position}"
        check(f"{where} primary", shadow.primary)
        check(f"{where} candidate", shadow.candidate)
        if shadow.primary == shadow.candidate:
            raise CatalogueError(
                f"catalogue {path}: {where}: primary and candidate are both {shadow.primary!r}; to compare a "
                "checkpoint with itself, declare it twice under two names"
            )
        if (shadow.primary, shadow.candidate) in seen:
            raise CatalogueError(
                f"catalogue {path}: {where}: {shadow.primary!r} -> {shadow.candidate!r} is declared twice"
            )
        seen.add((shadow.primary, shadow.candidate))
    return traffic


def check_request_limit(catalogue: Catalogue, max_pairs_per_request: int) -> None:
    """A request the API accepts must fit every variant's queue, or it would be refused however idle the service."""
    small = [
        f"{variant.name} ({variant.max_queue_pairs})"
        for variant in catalogue.variants
        if variant.enabled and variant.max_queue_pairs < max_pairs_per_request
    ]
    if small:
        raise CatalogueError(
            f"catalogue {catalogue.source}: max_pairs_per_request={max_pairs_per_request} exceeds max_queue_pairs of "
            f"{', '.join(small)}: raise max_queue_pairs or lower XNLI_SERVE_MAX_PAIRS_PER_REQUEST"
        )
