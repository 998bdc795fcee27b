"""What every holder of requests does the same, whether it runs them (``Engine``) or forwards them to the engine
process (``app.multiprocess.engine_client.EngineClient``): which variant a name resolves to, the timeout a request gets,
the refusal while draining, and the count of requests inside with a wait until there are none."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol, TypeVar

from app.engine.errors import DrainingError, UnknownVariantError
from app.engine.models.catalogue import VariantSpec


class _Variant(Protocol):
    @property
    def spec(self) -> VariantSpec: ...


V = TypeVar("V", bound=_Variant)


def resolve_variant(variants: Mapping[str, V], default_variant: str, name: str | None) -> V:
    """The enabled variant called ``name`` (the default one for None); UnknownVariantError names those served."""
    runtime = variants.get(name or default_variant)
    if runtime is None or not runtime.spec.enabled:
        served = [runtime.spec.name for runtime in variants.values() if runtime.spec.enabled]
        raise UnknownVariantError(str(name or default_variant), served)
    return runtime


def request_timeout(limit_s: float, timeout_s: float | None) -> float:
    """A request's own ``timeout_s`` may shorten the service's ``limit_s``, never lengthen it."""
    return limit_s if timeout_s is None else min(timeout_s, limit_s)


def refuse_while_draining(draining: bool) -> None:
    if draining:
        raise DrainingError("the service is shutting down and takes no new requests")


class Inflight:
    """Requests inside; ``wait_idle`` returns once there are none (bound it with asyncio.timeout)."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()

    def enter(self) -> None:
        self.count += 1

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        while self.count:
            self._idle.clear()
            await self._idle.wait()
