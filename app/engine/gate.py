"""What every holder of requests does the same, whether it runs them (``Engine``) or forwards them to the engine
process (``app.multiprocess.engine_client.EngineClient``): one :class:`RequestGate` each, so the two cannot drift."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Generic, Protocol, TypeVar

from app import metrics
from app.engine.contract import Priority
from app.engine.errors import DrainingError, UnknownVariantError
from app.engine.models.catalogue import VariantSpec
from app.engine.traffic.split import TrafficRouter


class _Variant(Protocol):
    @property
    def spec(self) -> VariantSpec: ...


V = TypeVar("V", bound=_Variant)


def draining_error() -> DrainingError:
    """The refusal of a request that arrives while the service drains (one wording, whoever answers it)."""
    return DrainingError("the service is shutting down and takes no new requests")


class RequestGate(Generic[V]):
    """Routing, the timeout rule, draining and the count of requests inside.

    ``variants`` is the table requests resolve against: the engine's own (changed in place by the repository) or, in
    a front end, the engine process's last broadcast (replaced whole on each). ``variant_ready`` tells the traffic
    split which of its variants serve now.
    """

    def __init__(
        self,
        variants: Mapping[str, V],
        default_variant: str,
        router: TrafficRouter,
        request_timeout_s: float,
        variant_ready: Callable[[str], bool],
    ) -> None:
        self.variants = variants
        self.default_variant = default_variant
        self.router = router
        self.request_timeout_s = request_timeout_s
        self.draining = False
        self._variant_ready = variant_ready
        self._inside = 0
        self._idle = asyncio.Event()

    # -- routing ---------------------------------------------------------------------------------------------------

    def resolve(self, name: str | None) -> V:
        """The enabled variant called ``name`` (the default one for None); UnknownVariantError names those served."""
        variant = self.variants.get(name or self.default_variant)
        if variant is None or not variant.spec.enabled:
            served = [variant.spec.name for variant in self.variants.values() if variant.spec.enabled]
            raise UnknownVariantError(str(name or self.default_variant), served)
        return variant

    def route(self, variant: str | None, routing_key: str | None = None) -> V:
        """The variant that answers a request: ``variant`` when named, else the catalogue's ``[traffic] split``
        (sticky for a routing key; among the split variants serving now), else the default variant. Counted in
        xnli_routed_requests_total. A request is routed once; what it carries from then on is the name."""
        decision = self.router.choose(variant, routing_key, self._variant_ready)
        chosen = self.resolve(decision.variant)
        metrics.ROUTED_REQUESTS.labels(chosen.spec.name, str(decision.route)).inc()
        return chosen

    # -- the rules every request passes --------------------------------------------------------------------------

    def timeout(self, timeout_s: float | None) -> float:
        """A request's own ``timeout_s`` may shorten the service's ``request_timeout_s``, never lengthen it."""
        limit = self.request_timeout_s
        return limit if timeout_s is None else min(timeout_s, limit)

    @staticmethod
    def refuse_shadow_priority(priority: Priority) -> None:
        """Shadow work is the engine's own: no caller's request may ask for its lane."""
        if priority is Priority.SHADOW:
            raise ValueError("shadow priority is reserved for the engine's own shadow work")

    def refuse_while_draining(self) -> None:
        if self.draining:
            raise draining_error()

    # -- draining and requests inside ------------------------------------------------------------------------------

    def begin_drain(self) -> None:
        """New requests are refused from now on (``refuse_while_draining``); those inside finish."""
        self.draining = True

    @property
    def inflight(self) -> int:
        """Requests inside now (between ``enter`` and ``leave``)."""
        return self._inside

    def enter(self) -> None:
        self._inside += 1

    def leave(self) -> None:
        self._inside -= 1
        if self._inside == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no request is inside (bound it with asyncio.timeout)."""
        while self._inside:
            self._idle.clear()
            await self._idle.wait()
