"""Process-wide settings: the one place every knob of the service is declared (env prefix ``XNLI_SERVE_``)."""

from __future__ import annotations

import ipaddress
import math
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CATALOGUE_FILE = "variants.toml"  # the catalogue's name inside a model store
DEFAULT_CATALOGUE = Path("model_store") / CATALOGUE_FILE


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs a container's quota allows (cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), rounded up; None if none.

    ``os.cpu_count()`` sees the node's cores: a pod limited to 4 CPUs on a 64-core node would otherwise start 64
    tokenizer and torch threads, which the quota then throttles.
    """
    try:
        quota, _, period = (root / "cpu.max").read_text(encoding="ascii").strip().partition(" ")
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period or "100000")))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text(encoding="ascii"))
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 and period_us > 0 else None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by the container's CPU quota."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    return max(1, min(count, limit) if limit is not None else count)


def _physical_cores() -> int:
    """Cores for torch's intra-op pool: hyper-threads only add contention to matrix kernels; never more than the
    container may use."""
    cores = set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            physical_id = core_id = ""
            for line in cpuinfo:
                if line.startswith("physical id"):
                    physical_id = line.split(":", 1)[1].strip()
                elif line.startswith("core id"):
                    core_id = line.split(":", 1)[1].strip()
                    cores.add((physical_id, core_id))
    except OSError:
        pass
    return min(len(cores), available_cpus()) if cores else available_cpus()


def is_loopback(host: str) -> bool:
    """Whether a bind address is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


MIN_API_KEY_LENGTH = 16
"""Shorter keys are refused at start-up: a guessable key is an open door that looks shut."""
MAKE_A_KEY = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


class KeySourceError(ValueError):
    """An API key source was configured but yields no usable key: starting would leave routes open (or as good as)."""


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
        default_factory=available_cpus,
        ge=1,
        description="Threads that tokenize requests before they are queued (default: CPUs the container may use).",
    )
    max_tokenizing_pairs: int = Field(
        1024,
        ge=1,
        description="Pairs that may wait for the tokenizer threads; requests beyond get 429 instead of queueing "
        "behind a burst.",
    )
    max_tokenizing_chars: int = Field(
        4 * 1_048_576,
        ge=1,
        description="Characters (after each text is cut to what max_seq_len can use) that may wait for the "
        "tokenizer threads; requests beyond get 429. At least XNLI_SERVE_MAX_BODY_BYTES.",
    )
    torch_threads: int = Field(
        default_factory=_physical_cores,
        ge=1,
        description="torch and ONNX Runtime intra-op threads on CPU (physical cores, at most the CPU quota).",
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
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A connection must send complete request headers within this long of opening (or of the first "
        "byte of its next request); else 408 and close.",
    )
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest pause between a request body's bytes; past it the connection closes (so does a body "
        "slower than min_body_rate_bytes_s once this long has passed).",
    )
    write_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest a client may leave its answers unread once the send buffer is full; past it the "
        "connection is reset (a client that does not read cannot hold a request slot).",
    )
    min_body_rate_bytes_s: float = Field(
        4096.0, ge=0, description="Slowest average rate a request body may arrive at, after body_timeout_s."
    )
    max_header_bytes: int = Field(
        65_536, ge=4096, description="Request line and headers together; beyond, 431 and close, nothing buffered."
    )
    max_inflight_requests: int = Field(
        512,
        ge=1,
        description="Requests one serving process handles at once; beyond, 429 with Retry-After from the HTTP edge, "
        "before routing (health probes and /metrics are never refused). Binds when HTTP itself is the bottleneck.",
    )
    max_connections: int = Field(
        1024,
        ge=1,
        description="Open connections per serving process (lowered to stay 128 below the descriptor limit). A new "
        "one beyond it closes the longest-waiting connection with no request in flight, or gets 503 at once.",
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long accepted requests may take to finish before the process exits."
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Bearer keys that may call protected routes (comma-separated), each at least 16 characters. Set "
        "but empty, or a shorter key, refuses to start.",
    )
    api_key_file: Path | None = Field(
        None,
        description="File with one API key per line (blank lines, # comments); a file with no key refuses to start.",
    )
    public_health: bool = Field(True, description="/health/* need no key.")
    public_metrics: bool = Field(True, description="/metrics needs no key.")
    public_docs: bool = Field(True, description="/docs, /redoc and /openapi.json need no key.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS (comma-separated); empty = CORS off."
    )
    traffic_seed: int | None = Field(
        None, description="Seed of the split draws and shadow sampling (reproducible tests); unset = random."
    )
    shadow_max_queue_pairs: int = Field(
        256, ge=1, description="Shadow pairs that may wait per candidate; more are dropped (reason queue_full)."
    )
    shadow_timeout_s: float = Field(
        10.0, gt=0, description="How long a shadow may wait for the device before it is dropped (reason expired)."
    )
    shadow_busy_backlog_ms: float = Field(
        100.0,
        ge=0,
        description="New shadows are dropped (reason busy) while more client work than this is queued on the device.",
    )
    worker_pipeline: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Device workers prepare batch N+1 and answer batch N-1 while batch N runs (copy stream and "
        "events on CUDA); auto = on CUDA devices only (on CPU no consistent gain was measured).",
    )
    frontend_processes: int = Field(
        1,
        ge=1,
        description="HTTP front-end processes; above 1, they share the port and feed one engine process over "
        "ZeroMQ, so HTTP parsing and validation do not cap a fast device (see app.multiprocess).",
    )
    engine_silence_s: float = Field(
        2.0,
        gt=0.2,
        description="With several front ends: how long the engine process may go without its state broadcast (sent "
        "every 50 ms from its event loop) before a front end takes it for gone (unready, waiting requests 503). Not "
        "lower: a busy engine loop (a large request tokenized inline, shadow comparisons, a CPU-starved container) "
        "can delay broadcasts for a second without anything being wrong.",
    )
    # -- gRPC (issue #26): the Open Inference Protocol over gRPC, beside HTTP in every serving process ------------
    grpc_enabled: bool = Field(
        True,
        description="Serve the Open Inference Protocol over gRPC (inference.GRPCInferenceService) on grpc_port too; "
        "false = HTTP only.",
    )
    grpc_port: int = Field(
        8001,
        ge=1,
        le=65535,
        description="gRPC port (Triton's default), on the same host as HTTP; with several front ends each binds it "
        "with SO_REUSEPORT.",
    )
    grpc_reflection: bool = Field(
        False,
        description="Serve gRPC server reflection (grpc.reflection.v1alpha), so grpcurl and similar tools list and "
        "call the services without the .proto. Off by default: reflection asks for no API key and its streams are "
        "capped only by the server's overall bound on calls at once.",
    )
    # -- end gRPC ---------------------------------------------------------------------------------------------------
    enable_fault_injection: bool = Field(False, description="Honour [variant.faults] in the catalogue (tests only).")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"

    @field_validator("variants", "api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    def exposure_warning(self, keys: list[str]) -> str | None:
        """What to warn about when the service listens beyond this machine with no key."""
        if keys or is_loopback(self.host):
            return None
        return (
            f"serving on {self.host} with no API key: every route is open to whoever reaches this address "
            "(set XNLI_SERVE_API_KEYS or XNLI_SERVE_API_KEY_FILE)"
        )

    def load_api_keys(self) -> list[str]:
        """Keys from the setting and the key file together.

        Fails closed: a configured source that yields no key (an empty or comments-only file, ``API_KEYS=","``)
        raises KeySourceError instead of silently serving every route without authentication.
        """
        keys = [key.get_secret_value() for key in self.api_keys]
        if "api_keys" in self.model_fields_set and not keys:
            raise KeySourceError("XNLI_SERVE_API_KEYS is set but holds no key")
        for number, key in enumerate(keys, start=1):
            _check_key_length(key, f"key {number} of XNLI_SERVE_API_KEYS")
        if self.api_key_file is not None:
            from_file: list[str] = []
            for number, line in enumerate(self.api_key_file.read_text(encoding="utf-8").splitlines(), start=1):
                key = line.strip()
                if key and not key.startswith("#"):
                    _check_key_length(key, f"line {number} of the API key file {self.api_key_file}")
                    from_file.append(key)
            if not from_file:
                raise KeySourceError(f"the API key file {self.api_key_file} holds no key")
            keys += from_file
        return keys


def _check_key_length(key: str, where: str) -> None:
    """Refuse a short key, saying where it is but never what it is (the message goes to logs)."""
    if len(key) < MIN_API_KEY_LENGTH:
        raise KeySourceError(
            f"{where} has {len(key)} characters, fewer than {MIN_API_KEY_LENGTH}; make a key with {MAKE_A_KEY}"
        )
