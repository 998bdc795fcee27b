from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import Settings


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
