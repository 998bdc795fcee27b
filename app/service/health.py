"""Liveness and readiness, decided once for every protocol (native /health/*, OIP /v2/health/*)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.service.engine_handle import EngineHandle

ReadinessState = Literal["ready", "draining", "not_ready"]


@dataclass(frozen=True, slots=True)
class Readiness:
    state: ReadinessState
    variants: dict[str, str]  # each enabled variant's load status

    @property
    def ready(self) -> bool:
        return self.state == "ready"


def readiness(engine: EngineHandle) -> Readiness:
    """Ready only when every enabled variant is loaded and warmed up, the workers live and no drain has begun."""
    statuses = {name: str(runtime.status) for name, runtime in engine.variants.items() if runtime.spec.enabled}
    if engine.draining:
        return Readiness("draining", statuses)
    return Readiness("ready" if engine.ready else "not_ready", statuses)


def liveness(engine: EngineHandle) -> bool:
    """False once loading failed or a device worker died: the process should be restarted."""
    return engine.live
