"""Process-wide settings: the one place every knob of the service is declared (env prefix ``XNLI_SERVE_``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_CATALOGUE = Path("model_store") / "variants.toml"


def _physical_cores() -> int:
    """Cores for torch's intra-op pool: hyper-threads only add contention to matrix kernels."""
    try:
        cores = set()
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            physical_id = core_id = ""
            for line in cpuinfo:
                if line.startswith("physical id"):
                    physical_id = line.split(":", 1)[1].strip()
                elif line.startswith("core id"):
                    core_id = line.split(":", 1)[1].strip()
                    cores.add((physical_id, core_id))
        if cores:
            return len(cores)
    except OSError:
        pass
    return os.cpu_count() or 1


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XNLI_SERVE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    catalogue: Path = Field(
        DEFAULT_CATALOGUE,
        description="Variant catalogue (TOML). Relative checkpoint paths in it resolve against its own folder.",
    )
    variants: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Serve only these catalogue variants (comma-separated in the environment); empty = all enabled.",
    )
    max_pairs_per_request: int = Field(64, ge=1, description="Pairs one /predict call may carry (413 beyond).")
    tokenization_workers: int = Field(
        default_factory=lambda: max(1, os.cpu_count() or 1),
        ge=1,
        description="Threads that tokenize requests before they are queued.",
    )
    torch_threads: int = Field(
        default_factory=_physical_cores,
        ge=1,
        description="torch and ONNX Runtime intra-op threads on CPU (physical cores).",
    )
    export_cache_dir: Path | None = Field(
        None,
        description="Where ONNX exports are cached; unset = beside each checkpoint (set it for read-only volumes).",
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="Server-wide deadline of a request; a request's timeout_ms may only shorten it."
    )
    keep_alive_s: float = Field(
        75.0,
        gt=0,
        description="Idle keep-alive timeout. Longer than clients' and load balancers' own (often 60 s), so the "
        "server never closes a connection a client is about to reuse (that race surfaces as a reset request).",
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted (413 beyond).")
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long accepted requests may take to finish before the process exits."
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Bearer keys that may call protected routes (comma-separated)."
    )
    api_key_file: Path | None = Field(None, description="File with one API key per line (blank lines, # comments).")
    public_health: bool = Field(True, description="/health/* need no key.")
    public_metrics: bool = Field(True, description="/metrics needs no key.")
    public_docs: bool = Field(True, description="/docs, /redoc and /openapi.json need no key.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS (comma-separated); empty = CORS off."
    )
    enable_fault_injection: bool = Field(False, description="Honour [variant.faults] in the catalogue (tests only).")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"

    @field_validator("variants", "api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    def load_api_keys(self) -> list[str]:
        """Keys from the setting and the key file together."""
        keys = list(self.api_keys)
        if self.api_key_file is not None:
            for line in self.api_key_file.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line)
        return keys
