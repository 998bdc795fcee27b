"""RequestGate: what Engine and EngineClient both do with a request before it runs (routing, timeout, draining, the
count of requests inside), in one object."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest

from app import metrics
from app.engine.contract import Priority
from app.engine.errors import DrainingError, UnknownVariantError
from app.engine.gate import RequestGate, draining_error
from app.engine.models.catalogue import VariantSpec, load_catalogue
from app.engine.traffic.split import TrafficRouter
from tests.support.helpers import write_catalogue


@dataclass
class Served:
    spec: VariantSpec


def gate(
    tmp_path: Path, split: dict[str, float] | None = None, ready: frozenset[str] = frozenset()
) -> RequestGate[Served]:
    path = write_catalogue(
        tmp_path / "variants.toml",
        tmp_path,
        [{"name": "alpha"}, {"name": "beta"}, {"name": "off", "enabled": False}],
    )
    if split:
        path.write_text(
            path.read_text(encoding="utf-8")
            + "\n[traffic]\nsplit = {"
            + ", ".join(f'"{name}" = {weight}' for name, weight in split.items())
            + "}\n",
            encoding="utf-8",
        )
    catalogue = load_catalogue(path)
    variants = {spec.name: Served(spec) for spec in catalogue.variants}
    router = TrafficRouter(catalogue.traffic, catalogue.default_variant, seed=3)
    return RequestGate(variants, catalogue.default_variant, router, 30.0, lambda name: name in ready)


def routed(variant: str, route: str) -> float:
    value: float = metrics.ROUTED_REQUESTS.labels(variant, route)._value.get()
    return value


def test_resolve_names_the_enabled_variant_or_the_default(tmp_path: Path) -> None:
    requests = gate(tmp_path)
    assert requests.resolve("beta").spec.name == "beta"
    assert requests.resolve(None).spec.name == "alpha"
    for name in ("ghost", "off"):
        with pytest.raises(UnknownVariantError) as unknown:
            requests.resolve(name)
        assert unknown.value.known == ["alpha", "beta"]


def test_route_decides_once_and_counts(tmp_path: Path) -> None:
    requests = gate(tmp_path)
    before = routed("beta", "explicit"), routed("alpha", "default")
    assert requests.route("beta").spec.name == "beta"
    assert requests.route(None).spec.name == "alpha"
    assert (routed("beta", "explicit"), routed("alpha", "default")) == (before[0] + 1, before[1] + 1)
    with pytest.raises(UnknownVariantError):
        requests.route("ghost")


def test_a_split_chooses_among_the_variants_ready_now(tmp_path: Path) -> None:
    requests = gate(tmp_path, split={"alpha": 0.5, "beta": 0.5}, ready=frozenset({"beta"}))
    assert {requests.route(None, routing_key=f"user-{index}").spec.name for index in range(20)} == {"beta"}


def test_a_variants_table_replaced_whole_is_what_resolves(tmp_path: Path) -> None:
    """A front end replaces the table on every broadcast: the gate resolves against the new one."""
    requests = gate(tmp_path)
    requests.variants = {"beta": requests.variants["beta"]}
    requests.default_variant = "beta"
    assert requests.resolve(None).spec.name == "beta"
    with pytest.raises(UnknownVariantError):
        requests.resolve("alpha")


def test_a_request_may_shorten_the_timeout_never_lengthen_it(tmp_path: Path) -> None:
    requests = gate(tmp_path)
    assert requests.timeout(None) == 30.0
    assert requests.timeout(2.5) == 2.5
    assert requests.timeout(90.0) == 30.0


def test_shadow_priority_is_the_engines_own(tmp_path: Path) -> None:
    requests = gate(tmp_path)
    requests.refuse_shadow_priority(Priority.INTERACTIVE)
    requests.refuse_shadow_priority(Priority.BATCH)
    with pytest.raises(ValueError, match="shadow"):
        requests.refuse_shadow_priority(Priority.SHADOW)


def test_draining_refuses_with_the_one_wording(tmp_path: Path) -> None:
    requests = gate(tmp_path)
    requests.refuse_while_draining()
    requests.begin_drain()
    assert requests.draining
    with pytest.raises(DrainingError) as refused:
        requests.refuse_while_draining()
    assert str(refused.value) == str(draining_error())


async def test_wait_idle_returns_once_no_request_is_inside(tmp_path: Path) -> None:
    requests = gate(tmp_path)
    await asyncio.wait_for(requests.wait_idle(), 1)  # none inside: at once
    requests.enter()
    requests.enter()
    assert requests.inflight == 2
    waiting = asyncio.ensure_future(requests.wait_idle())
    requests.leave()
    await asyncio.sleep(0.01)
    assert not waiting.done()
    requests.leave()
    await asyncio.wait_for(waiting, 1)
    assert requests.inflight == 0
