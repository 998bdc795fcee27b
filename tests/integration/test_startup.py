"""Start-up: readiness waits for warm-up, and a bad catalogue stops the process with one clear message."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, running_server, server_command

pytestmark = pytest.mark.integration


def refused_start(catalogue: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `xnli-serve serve` on a catalogue that must be refused before the port opens (exit code 2)."""
    result = subprocess.run(
        server_command("serve", "--port", str(free_port())),
        env={**os.environ, "XNLI_SERVE_CATALOGUE": str(catalogue), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    return result


def test_ready_only_after_every_variant_is_warmed_up(demo_store: Path, tmp_path: Path) -> None:
    # Large warm-up shapes keep the loading window wide enough to observe.
    catalogue = tmp_path / "variants.toml"
    text = (demo_store / "variants.toml").read_text(encoding="utf-8")
    text = text.replace('path = "', f'path = "{demo_store}/').replace("max_batch_size = 32", "max_batch_size = 256")
    text = text.replace("max_batch_tokens = 8192", "max_batch_tokens = 65536").replace(
        "max_seq_len = 256", "max_seq_len = 512"
    )
    catalogue.write_text(text, encoding="utf-8")
    with running_server(catalogue, tmp_path, wait=False) as server:
        seen = server.wait_ready()
        assert 503 in seen, seen  # the port was open and answered "not ready" while loading
        assert seen.index(503) < seen.index(200)
        logs = server.logs()
        for name in ("xlmr-mnli", "xlmr-squad-mnli", "xlmr-hellaswag-mnli", "xlmr-multitask-mnli"):
            assert f"variant {name} ready (warm-up [(128, 512), (256, 256)]" in logs
        variants = httpx.get(f"{server.base_url}/variants").json()["variants"]
        assert all(variant["warmup"]["shapes"] == [[128, 512], [256, 256]] for variant in variants)


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
def test_bad_catalogue_exits_before_serving(demo_store: Path, tmp_path: Path, mutate: object, message: str) -> None:
    text = (demo_store / "variants.toml").read_text(encoding="utf-8")
    text = text.replace('path = "', f'path = "{demo_store}/')
    catalogue = tmp_path / "variants.toml"
    catalogue.write_text(mutate(text), encoding="utf-8")  # type: ignore[operator]
    result = refused_start(catalogue)
    assert "xnli-serve: cannot start:" in result.stderr
    assert message in result.stderr


def test_unmappable_labels_exit_before_serving(demo_store: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "generic-labels"
    shutil.copytree(demo_store / "xlmr-mnli", folder)
    config = (folder / "config.json").read_text(encoding="utf-8")
    for index, label in enumerate(("entailment", "neutral", "contradiction")):
        config = config.replace(f'"{label}"', f'"LABEL_{index}"')
    (folder / "config.json").write_text(config, encoding="utf-8")
    catalogue = tmp_path / "variants.toml"
    catalogue.write_text(f'[[variant]]\nname = "generic"\npath = "{folder}"\n', encoding="utf-8")
    result = refused_start(catalogue)
    assert "variant 'generic': labels cannot be mapped by name" in result.stderr


def test_fault_injection_is_refused_unless_enabled(demo_store: Path, tmp_path: Path) -> None:
    catalogue = tmp_path / "variants.toml"
    catalogue.write_text(
        f'[[variant]]\nname = "faulty"\npath = "{demo_store}/xlmr-mnli"\nfaults = {{ fail_every = 1 }}\n',
        encoding="utf-8",
    )
    result = refused_start(catalogue)
    assert "variant 'faulty': declares [variant.faults] but fault injection is disabled" in result.stderr


@pytest.mark.parametrize(
    ("key_file", "keys", "message"),
    [
        pytest.param("", None, "the API key file {file} holds no key", id="empty-file"),
        pytest.param("# operators\n\n   \n# nobody yet\n", None, "the API key file {file} holds no key", id="comments"),
        pytest.param(None, ",", "XNLI_SERVE_API_KEYS is set but holds no key", id="comma-only"),
        pytest.param(None, "", "XNLI_SERVE_API_KEYS is set but holds no key", id="empty-setting"),
    ],
)
def test_a_key_source_without_keys_stops_start_up(
    demo_catalogue: Path, tmp_path: Path, key_file: str | None, keys: str | None, message: str
) -> None:
    """Fails closed: before, each of these started with every route open."""
    env: dict[str, str] = {}
    file = tmp_path / "keys.txt"
    if key_file is not None:
        file.write_text(key_file, encoding="utf-8")
        env["XNLI_SERVE_API_KEY_FILE"] = str(file)
    if keys is not None:
        env["XNLI_SERVE_API_KEYS"] = keys
    result = refused_start(demo_catalogue, env)
    assert result.stderr.strip() == f"xnli-serve: cannot start: API keys: {message.format(file=file)}"


def test_requests_must_fit_every_variant_queue(demo_store: Path, tmp_path: Path) -> None:
    catalogue = tmp_path / "variants.toml"
    catalogue.write_text(
        f'[[variant]]\nname = "narrow"\npath = "{demo_store}/xlmr-mnli"\nmax_queue_pairs = 16\n', encoding="utf-8"
    )
    result = refused_start(catalogue)
    assert "max_pairs_per_request=64 exceeds max_queue_pairs of narrow (16)" in result.stderr


def test_requests_must_fit_the_tokenization_backlog(demo_catalogue: Path) -> None:
    result = refused_start(
        demo_catalogue, {"XNLI_SERVE_MAX_TOKENIZING_PAIRS": "16", "XNLI_SERVE_MAX_PAIRS_PER_REQUEST": "32"}
    )
    assert "XNLI_SERVE_MAX_TOKENIZING_PAIRS=16 is below XNLI_SERVE_MAX_PAIRS_PER_REQUEST=32" in result.stderr
