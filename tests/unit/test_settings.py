from __future__ import annotations

import os
from pathlib import Path

import pytest

from app import settings as settings_module
from app.settings import Settings, cgroup_cpu_limit, is_loopback


def test_environment_prefix_and_variant_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XNLI_SERVE_PORT", "9123")
    monkeypatch.setenv("XNLI_SERVE_CATALOGUE", "/srv/catalogue.toml")
    monkeypatch.setenv("XNLI_SERVE_VARIANTS", "xlmr-mnli, xlmr-squad-mnli")
    settings = Settings()
    assert settings.port == 9123
    assert settings.catalogue == Path("/srv/catalogue.toml")
    assert settings.variants == ["xlmr-mnli", "xlmr-squad-mnli"]


def test_explicit_values_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XNLI_SERVE_PORT", "9123")
    assert Settings(port=8001).port == 8001


def test_defaults() -> None:
    settings = Settings()
    assert (settings.host, settings.port, settings.max_pairs_per_request) == ("127.0.0.1", 8000, 64)
    assert settings.catalogue == Path("model_store/variants.toml")
    assert settings.torch_threads >= 1


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "400000 100000\n"}, 4),
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: two threads, each throttled a little
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
    ids=["v2-4-cpus", "v2-fraction", "v2-unlimited", "v1-3-cpus", "v1-unlimited", "no-cgroup"],
)
def test_cpu_quota_of_a_container(tmp_path: Path, files: dict[str, str], expected: int | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="ascii")
    assert cgroup_cpu_limit(tmp_path) == expected


def test_thread_pools_follow_the_quota_not_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))  # a 64-core node
    monkeypatch.setattr(settings_module, "cgroup_cpu_limit", lambda: 4)  # a pod limited to 4 CPUs
    settings = Settings()
    assert settings.tokenization_workers == 4
    assert settings.torch_threads <= 4


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("::", False)],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    assert (Settings(host=host).exposure_warning([]) is None) is loopback
    assert Settings(host=host).exposure_warning(["a-key"]) is None
