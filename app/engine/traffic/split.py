"""Live traffic between variants: the weighted split of requests that name no variant, and shadow sampling.

Both follow the catalogue's ``[traffic]`` table (``app.engine.models.catalogue.TrafficSpec``). Pure logic: the engine
calls it, nothing here touches a queue or a device.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from app.engine.models.catalogue import ShadowSpec, TrafficSpec


class Route(StrEnum):
    """How a request's variant was chosen (the `route` label of xnli_routed_requests_total)."""

    EXPLICIT = "explicit"
    SPLIT = "split"
    STICKY = "sticky"
    DEFAULT = "default"


def key_position(routing_key: str) -> float:
    """Where a routing key falls in [0, 1): the first 8 bytes of its SHA-256, the same in every process and
    replica (Python's own ``hash`` is salted per process and would move keys on every restart)."""
    digest = hashlib.sha256(routing_key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    variant: str
    route: Route


class TrafficRouter:
    """Chooses the variant of requests that name none, and which pairs each shadow samples.

    The split lays the variants' normalised weights end to end on [0, 1) in catalogue order; a request draws a
    point, at random or from its routing key, and gets the variant whose interval holds it. A key therefore keeps its
    variant as long as the weights stay; changing the weights moves only the keys near a moved boundary.
    """

    def __init__(self, traffic: TrafficSpec, default_variant: str, seed: int | None = None) -> None:
        self.default_variant = default_variant
        self.variants = list(traffic.split)
        total = sum(traffic.split.values())
        self._bounds: list[float] = []
        running = 0.0
        for weight in traffic.split.values():
            running += weight / total
            self._bounds.append(running)
        self.shadows: dict[str, tuple[ShadowSpec, ...]] = {}
        for shadow in traffic.shadow:
            self.shadows[shadow.primary] = (*self.shadows.get(shadow.primary, ()), shadow)
        self._random = random.Random(seed)

    @property
    def splits(self) -> bool:
        return bool(self.variants)

    def shares(self) -> dict[str, float]:
        """Each split variant's share of the requests that name no variant."""
        lower = [0.0, *self._bounds[:-1]]
        return {name: upper - low for name, low, upper in zip(self.variants, lower, self._bounds, strict=True)}

    def choose(
        self, variant: str | None, routing_key: str | None = None, serving: Callable[[str], bool] | None = None
    ) -> RoutingDecision:
        """An explicit ``variant`` always wins; otherwise the split (sticky with a routing key), else the default.

        With ``serving``, a split variant that is not serving (unloaded, reloading, failed) is skipped: the same point
        falls on the serving variants' weights laid end to end, so keys stay sticky while the set is unchanged and
        return to their variant when it is back. If none is serving the first choice stands (and will be refused).
        """
        if variant is not None:
            return RoutingDecision(variant, Route.EXPLICIT)
        if not self.variants:
            return RoutingDecision(self.default_variant, Route.DEFAULT)
        if routing_key is not None:
            point, route = key_position(routing_key), Route.STICKY
        else:
            point, route = self._random.random(), Route.SPLIT
        chosen = self._at(point, self.variants, self._bounds)
        if serving is not None and not serving(chosen):
            shares = self.shares()
            available = [name for name in self.variants if serving(name)]
            if available:
                total = sum(shares[name] for name in available)
                bounds, running = [], 0.0
                for name in available:
                    running += shares[name] / total
                    bounds.append(running)
                chosen = self._at(point, available, bounds)
        return RoutingDecision(chosen, route)

    @staticmethod
    def _at(point: float, names: list[str], bounds: list[float]) -> str:
        return names[min(bisect.bisect_right(bounds, point), len(names) - 1)]

    def sample(self, shadow: ShadowSpec, count: int) -> list[int]:
        """Positions, among a request's ``count`` pairs, to shadow: each independently with the shadow's fraction."""
        if shadow.fraction >= 1.0:
            return list(range(count))
        return [index for index in range(count) if self._random.random() < shadow.fraction]
