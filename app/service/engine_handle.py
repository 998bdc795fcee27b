"""What the API layer and the prediction service use of an engine: the ``Engine`` itself in one process, or the
``app.multiprocess.engine_client.EngineClient`` that stands in for it in a front-end process. Both satisfy
:class:`EngineHandle` (checked by mypy where the front end passes its client to the app)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from app.engine.models.catalogue import VariantSpec
from app.engine.scheduler.requests import Priority
from app.engine.status import PredictionResult, RepositoryEntry, VariantStatus


class ServedVariant(Protocol):
    """A variant as the engine holds it (``VariantRuntime``) or as the engine process last described it."""

    @property
    def spec(self) -> VariantSpec: ...

    @property
    def status(self) -> VariantStatus: ...

    @property
    def error(self) -> str | None: ...

    def describe(self) -> dict[str, Any]: ...


class EngineHandle(Protocol):
    @property
    def default_variant(self) -> str: ...

    @property
    def variants(self) -> Mapping[str, ServedVariant]: ...

    @property
    def ready(self) -> bool: ...

    @property
    def live(self) -> bool: ...

    @property
    def draining(self) -> bool: ...

    @property
    def inflight(self) -> int: ...

    def load(self) -> None: ...

    def close(self) -> None: ...

    def begin_drain(self) -> None: ...

    async def wait_idle(self) -> None: ...

    def resolve(self, name: str | None) -> ServedVariant: ...

    def route(self, variant: str | None, routing_key: str | None = None) -> ServedVariant: ...

    def variant_ready(self, name: str) -> bool: ...

    def repository_index(self) -> list[RepositoryEntry]: ...

    def repository_entry(self, name: str) -> RepositoryEntry: ...

    async def load_variant(self, name: str, *, min_queue_pairs: int = 1) -> object: ...

    async def unload_variant(self, name: str) -> None: ...

    async def predict(
        self,
        pairs: Sequence[tuple[str, str]],
        variant: str | None = None,
        truncate: bool = True,
        timeout_s: float | None = None,
        *,
        priority: Priority = Priority.INTERACTIVE,
        language: str | None = None,
    ) -> PredictionResult: ...
