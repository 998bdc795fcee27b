"""`xnli-serve serve` refuses what it cannot serve: exit code 2 and one clear message on stderr, before it serves.

In-process through the same Typer command (a refused start costs a fresh interpreter's torch import otherwise); a
real process's exit code and single stderr line are checked for broken tokenizers by
tests/integration/test_checkpoint_layouts.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import cli
from tests.support.helpers import free_port

Refuse = Callable[..., str]


@pytest.fixture
def refuse(monkeypatch: pytest.MonkeyPatch) -> Refuse:
    """Run `serve` on a catalogue (and settings) it must refuse; returns its stderr."""

    def serving(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("`serve` went on to serve a configuration it must refuse")

    monkeypatch.setattr("app.api.server.run_server", serving)
    # The real process configures JSON logging on its own stderr; here that would outlive the runner's streams.
    monkeypatch.setattr("app.logs.configure_logging", lambda *args, **kwargs: None)

    def run(catalogue: Path, env: dict[str, str] | None = None) -> str:
        result = CliRunner().invoke(
            cli, ["serve", "--port", str(free_port())], env={"XNLI_SERVE_CATALOGUE": str(catalogue), **(env or {})}
        )
        assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
        assert result.stdout == ""
        return result.stderr

    return run


def demo_text(demo_store: Path) -> str:
    """The demo catalogue with its checkpoint paths made absolute."""
    return (demo_store / "variants.toml").read_text(encoding="utf-8").replace('path = "', f'path = "{demo_store}/')


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        pytest.param(
            lambda text: text.replace('/xlmr-squad-mnli"', '/missing-folder"'),
            "variant 'xlmr-squad-mnli': checkpoint folder",
            id="missing-folder",
        ),
        pytest.param(
            lambda text: text.replace("max_batch_size = 32", "max_batch_size = -1"),
            "[defaults]: max_batch_size",
            id="bad-knob",
        ),
        pytest.param(
            lambda text: text.replace('intermediate_task = "squad"', 'intermediate_task = "squad"\ncolour = "red"'),
            "variant 'xlmr-squad-mnli': colour: Extra inputs are not permitted",
            id="typo-key",
        ),
    ],
)
def test_bad_catalogue(
    refuse: Refuse, demo_store: Path, tmp_path: Path, mutate: Callable[[str], str], message: str
) -> None:
    catalogue = tmp_path / "variants.toml"
    catalogue.write_text(mutate(demo_text(demo_store)), encoding="utf-8")
    stderr = refuse(catalogue)
    assert stderr.startswith("xnli-serve: cannot start:")
    assert message in stderr


def test_unmappable_labels(refuse: Refuse, demo_store: Path, tmp_path: Path) -> None:
    folder = tmp_path / "generic-labels"
    shutil.copytree(demo_store / "xlmr-mnli", folder)
    config = (folder / "config.json").read_text(encoding="utf-8")
    for index, label in enumerate(("entailment", "neutral", "contradiction")):
        config = config.replace(f'"{label}"', f'"LABEL_{index}"')
    (folder / "config.json").write_text(config, encoding="utf-8")
    catalogue = tmp_path / "variants.toml"
    catalogue.write_text(f'[[variant]]\nname = "generic"\npath = "{folder}"\n', encoding="utf-8")
    assert "variant 'generic': labels cannot be mapped by name" in refuse(catalogue)


def test_fault_injection_unless_enabled(refuse: Refuse, demo_store: Path, tmp_path: Path) -> None:
    catalogue = tmp_path / "variants.toml"
    catalogue.write_text(
        f'[[variant]]\nname = "faulty"\npath = "{demo_store}/xlmr-mnli"\nfaults = {{ fail_every = 1 }}\n',
        encoding="utf-8",
    )
    stderr = refuse(catalogue, {"XNLI_SERVE_ENABLE_FAULT_INJECTION": "false"})
    assert "variant 'faulty': declares [variant.faults] but fault injection is disabled" in stderr


@pytest.mark.parametrize(
    ("key_file", "keys", "message"),
    [
        pytest.param("", None, "the API key file {file} holds no key", id="empty-file"),
        pytest.param("# operators\n\n   \n# nobody yet\n", None, "the API key file {file} holds no key", id="comments"),
        pytest.param(None, ",", "XNLI_SERVE_API_KEYS is set but holds no key", id="comma-only"),
        pytest.param(None, "", "XNLI_SERVE_API_KEYS is set but holds no key", id="empty-setting"),
    ],
)
def test_a_key_source_without_keys(
    refuse: Refuse, demo_catalogue: Path, tmp_path: Path, key_file: str | None, keys: str | None, message: str
) -> None:
    """Fails closed: before, each of these started with every route open."""
    env: dict[str, str] = {}
    file = tmp_path / "keys.txt"
    if key_file is not None:
        file.write_text(key_file, encoding="utf-8")
        env["XNLI_SERVE_API_KEY_FILE"] = str(file)
    if keys is not None:
        env["XNLI_SERVE_API_KEYS"] = keys
    assert refuse(demo_catalogue, env).strip() == f"xnli-serve: cannot start: API keys: {message.format(file=file)}"


@pytest.mark.parametrize(
    ("key_file", "keys", "where"),
    [
        pytest.param(None, "#", "key 1 of XNLI_SERVE_API_KEYS has 1 characters", id="one-character"),
        pytest.param(
            None, "long-enough-key-0123,fifteen-chars-x", "key 2 of XNLI_SERVE_API_KEYS has 15 characters", id="second"
        ),
        pytest.param(
            "# operators\nlong-enough-key-0123\n\n  short-key  \n",
            None,
            "line 4 of the API key file {file} has 9 characters",
            id="file-line",
        ),
    ],
)
def test_a_short_key(
    refuse: Refuse, demo_catalogue: Path, tmp_path: Path, key_file: str | None, keys: str | None, where: str
) -> None:
    """Keys under 16 characters stop start-up: one line that says where the key is, never the key itself."""
    env: dict[str, str] = {}
    file = tmp_path / "keys.txt"
    if key_file is not None:
        file.write_text(key_file, encoding="utf-8")
        env["XNLI_SERVE_API_KEY_FILE"] = str(file)
    if keys is not None:
        env["XNLI_SERVE_API_KEYS"] = keys
    stderr = refuse(demo_catalogue, env)
    assert stderr.count("\n") == 1
    assert stderr.strip() == (
        f"xnli-serve: cannot start: API keys: {where.format(file=file)}, fewer than 16; make a key with "
        'python -c "import secrets; print(secrets.token_urlsafe(32))"'
    )
    assert "fifteen-chars" not in stderr
    assert "short-key" not in stderr


def test_requests_must_fit_every_variant_queue(refuse: Refuse, demo_store: Path, tmp_path: Path) -> None:
    catalogue = tmp_path / "variants.toml"
    catalogue.write_text(
        f'[[variant]]\nname = "narrow"\npath = "{demo_store}/xlmr-mnli"\nmax_queue_pairs = 16\n', encoding="utf-8"
    )
    stderr = refuse(catalogue, {"XNLI_SERVE_MAX_PAIRS_PER_REQUEST": "64"})
    assert "max_pairs_per_request=64 exceeds max_queue_pairs of narrow (16)" in stderr


def test_requests_must_fit_the_tokenization_backlog(refuse: Refuse, demo_catalogue: Path) -> None:
    stderr = refuse(demo_catalogue, {"XNLI_SERVE_MAX_TOKENIZING_PAIRS": "16", "XNLI_SERVE_MAX_PAIRS_PER_REQUEST": "32"})
    assert "XNLI_SERVE_MAX_TOKENIZING_PAIRS=16 is below XNLI_SERVE_MAX_PAIRS_PER_REQUEST=32" in stderr


def test_the_largest_body_must_fit_the_tokenization_backlog(refuse: Refuse, demo_catalogue: Path) -> None:
    stderr = refuse(
        demo_catalogue, {"XNLI_SERVE_MAX_TOKENIZING_CHARS": "1000000", "XNLI_SERVE_MAX_BODY_BYTES": "2000000"}
    )
    assert "XNLI_SERVE_MAX_TOKENIZING_CHARS=1000000 is below XNLI_SERVE_MAX_BODY_BYTES=2000000" in stderr
