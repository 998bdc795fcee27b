"""The catalogue's [traffic] table and the router: weighted split, sticky routing keys, shadow sampling."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from app.engine.models.catalogue import CatalogueError, TrafficSpec, load_catalogue
from app.engine.traffic.split import Route, RoutingDecision, TrafficRouter, key_position
from tests.support.helpers import write_catalogue

# Upper 0.1% points of the chi-square distribution by degrees of freedom: a fair split exceeds them once in 1,000.
CHI_SQUARE_999 = {1: 10.828, 2: 13.816}

VARIANTS: list[dict[str, object]] = [{"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "off", "enabled": False}]


def catalogue_with(tmp_path: Path, traffic: str, only: list[str] | None = None) -> TrafficSpec:
    path = write_catalogue(tmp_path / "variants.toml", tmp_path, VARIANTS)
    path.write_text(path.read_text(encoding="utf-8") + "\n" + traffic, encoding="utf-8")
    return load_catalogue(path, only).traffic


def test_traffic_table_is_parsed(tmp_path: Path) -> None:
    traffic = catalogue_with(
        tmp_path,
        """
[traffic]
split = { "a" = 0.9, "b" = 0.1 }

[[traffic.shadow]]
primary = "a"
candidate = "c"
fraction = 0.25

[[traffic.shadow]]
primary = "a"
candidate = "b"
fraction = 1
""",
    )
    assert traffic.split == {"a": 0.9, "b": 0.1}
    assert [(shadow.primary, shadow.candidate, shadow.fraction) for shadow in traffic.shadow] == [
        ("a", "c", 0.25),
        ("a", "b", 1.0),
    ]


def test_no_traffic_table_means_no_split_and_no_shadow(tmp_path: Path) -> None:
    assert catalogue_with(tmp_path, "") == TrafficSpec()


@pytest.mark.parametrize(
    ("traffic", "message"),
    [
        ('[traffic]\nsplit = { "a" = 1, "ghost" = 1 }', r"\[traffic\] split names unknown variant 'ghost'"),
        ('[traffic]\nsplit = { "a" = 1, "off" = 1 }', r"\[traffic\] split names disabled variant 'off'"),
        ('[traffic]\nsplit = { "a" = 1, "b" = 0 }', r"split weights must be positive numbers, got \{'b': 0\.0\}"),
        ('[traffic]\nsplit = { "a" = -2 }', "split weights must be positive numbers"),
        ('[traffic]\nsplit = { "a" = nan }', "split weights must be positive numbers"),
        ('[traffic]\nsplit = { "a" = "half" }', r"\[traffic\]: split\.a: Input should be a valid number"),
        ('[traffic]\nmirror = "a"', r"\[traffic\]: mirror: Extra inputs are not permitted"),
        (
            '[[traffic.shadow]]\nprimary = "a"\ncandidate = "ghost"\nfraction = 0.5',
            r"\[\[traffic.shadow\]\] #1 candidate names unknown variant 'ghost'",
        ),
        (
            '[[traffic.shadow]]\nprimary = "off"\ncandidate = "a"\nfraction = 0.5',
            r"\[\[traffic.shadow\]\] #1 primary names disabled variant 'off'",
        ),
        (
            '[[traffic.shadow]]\nprimary = "a"\ncandidate = "b"\nfraction = 0',
            r"shadow\.0\.fraction: Input should be greater than 0",
        ),
        (
            '[[traffic.shadow]]\nprimary = "a"\ncandidate = "b"\nfraction = 1.5',
            r"shadow\.0\.fraction: Input should be less than or equal to 1",
        ),
        ('[[traffic.shadow]]\nprimary = "a"\ncandidate = "b"', r"shadow\.0\.fraction: Field required"),
        (
            '[[traffic.shadow]]\nprimary = "a"\ncandidate = "a"\nfraction = 1',
            "primary and candidate are both 'a'; to compare a checkpoint with itself, declare it twice",
        ),
        (
            '[[traffic.shadow]]\nprimary = "a"\ncandidate = "b"\nfraction = 1\n'
            '[[traffic.shadow]]\nprimary = "a"\ncandidate = "b"\nfraction = 0.5',
            r"#2: 'a' -> 'b' is declared twice",
        ),
    ],
)
def test_bad_traffic_is_refused_with_one_clear_message(tmp_path: Path, traffic: str, message: str) -> None:
    with pytest.raises(CatalogueError, match=message):
        catalogue_with(tmp_path, traffic)


def test_a_replica_serving_part_of_the_catalogue_keeps_what_it_can_carry_out(tmp_path: Path) -> None:
    traffic = catalogue_with(
        tmp_path,
        '[traffic]\nsplit = { "a" = 3, "b" = 1, "c" = 1 }\n'
        '[[traffic.shadow]]\nprimary = "a"\ncandidate = "c"\nfraction = 1\n'
        '[[traffic.shadow]]\nprimary = "a"\ncandidate = "b"\nfraction = 1\n',
        only=["a", "b"],
    )
    assert traffic.split == {"a": 3, "b": 1}
    assert [(shadow.primary, shadow.candidate) for shadow in traffic.shadow] == [("a", "b")]


def router(split: dict[str, float], seed: int | None = 7) -> TrafficRouter:
    return TrafficRouter(TrafficSpec(split=split), "a", seed)


def test_explicit_variant_always_wins_and_no_split_means_the_default() -> None:
    assert router({"a": 1, "b": 1}).choose("c", "some-key") == RoutingDecision("c", Route.EXPLICIT)
    unsplit = router({})
    assert unsplit.choose(None) == RoutingDecision("a", Route.DEFAULT)
    assert unsplit.choose(None, "some-key") == RoutingDecision("a", Route.DEFAULT)


@pytest.mark.parametrize("split", [{"a": 0.9, "b": 0.1}, {"a": 1, "b": 1, "c": 2}, {"a": 0.05, "b": 0.15, "c": 0.8}])
@pytest.mark.parametrize("keyed", [False, True], ids=["random", "routing-keys"])
def test_split_shares_converge_to_the_weights(split: dict[str, float], keyed: bool) -> None:
    """Chi-square goodness of fit over 20,000 seeded draws (or 20,000 distinct keys)."""
    chooser = router(split, seed=2026)
    draws = 20_000
    counts = dict.fromkeys(split, 0)
    for index in range(draws):
        decision = chooser.choose(None, f"user-{index}" if keyed else None)
        assert decision.route is (Route.STICKY if keyed else Route.SPLIT)
        counts[decision.variant] += 1
    total = sum(split.values())
    expected = [draws * weight / total for weight in split.values()]
    statistic = sum((count - want) ** 2 / want for count, want in zip(counts.values(), expected, strict=True))
    assert statistic < CHI_SQUARE_999[len(split) - 1], (counts, expected)
    assert router(split).shares() == pytest.approx({name: weight / total for name, weight in split.items()})


def test_split_draws_are_reproducible_with_a_seed() -> None:
    def draws(seed: int) -> list[str]:
        chooser = router({"a": 1, "b": 1}, seed)
        return [chooser.choose(None).variant for _ in range(200)]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


def test_sticky_keys_never_switch_variant() -> None:
    """The same key gets the same variant every time, from any router with the same weights (another replica, a
    restart with another seed), while the weights stay."""
    keys = [f"customer-{index}" for index in range(2_000)] + ["", "ключ", "🔑", "a" * 10_000]
    first = {key: router({"a": 0.9, "b": 0.1}, seed=1).choose(None, key).variant for key in keys}
    other = router({"a": 0.9, "b": 0.1}, seed=99)
    for _ in range(3):
        assert {key: other.choose(None, key).variant for key in keys} == first
    assert {"a", "b"} == set(first.values())


def test_the_split_skips_a_variant_that_is_not_serving_and_keys_return_when_it_is_back() -> None:
    chooser = router({"a": 0.5, "b": 0.25, "c": 0.25})
    keys = [f"user-{index}" for index in range(3_000)]
    usual = {key: chooser.choose(None, key).variant for key in keys}
    without_b = {key: chooser.choose(None, key, serving=lambda name: name != "b").variant for key in keys}
    assert set(without_b.values()) == {"a", "c"}
    # Here the keys of a and c all stay (b sits between them); b's keys spread over a and c by their weights (2:1).
    assert all(without_b[key] == usual[key] for key in keys if usual[key] != "b")
    moved_from_b = Counter(without_b[key] for key in keys if usual[key] == "b")
    assert moved_from_b["a"] > moved_from_b["c"] > 0
    assert {key: chooser.choose(None, key).variant for key in keys} == usual  # b is back: every key is home again
    assert chooser.choose(None, "user-1", serving=lambda name: False).variant == usual["user-1"]  # none serving
    assert chooser.choose("b", "user-1", serving=lambda name: False) == RoutingDecision("b", Route.EXPLICIT)


def test_key_position_is_a_stable_sha256_point() -> None:
    # Pinned values: the same in every process, replica and release (Python's hash() is salted per process).
    assert key_position("customer-42") == 0.6260668756371839
    assert key_position("") == 0.8894159948913374
    assert all(0 <= key_position(str(index)) < 1 for index in range(1000))


def test_shadow_sampling_takes_its_fraction() -> None:
    traffic = TrafficSpec.model_validate(
        {
            "shadow": [
                {"primary": "a", "candidate": "b", "fraction": 0.25},
                {"primary": "a", "candidate": "c", "fraction": 1},
            ]
        }
    )
    chooser = TrafficRouter(traffic, "a", seed=5)
    partial, full = chooser.shadows["a"]
    assert chooser.sample(full, 7) == list(range(7))
    chosen = sum(len(chooser.sample(partial, 10)) for _ in range(2_000))
    assert abs(chosen - 5_000) < 3.3 * (20_000 * 0.25 * 0.75) ** 0.5  # within 3.3 standard deviations
