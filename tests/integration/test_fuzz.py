"""Schemathesis against the live OpenAPI schema: no 5xx, every response as documented, bad input refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT
from tests.support.helpers import ServerProcess, running_server, write_catalogue

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # `make test-slow` (CI runs it after `make test`)

CONFIG = Path(__file__).with_name("schemathesis.toml")
# CI runs a bounded, seeded sample; `make fuzz` runs many more examples with a fresh seed.
EXAMPLES = int(os.environ.get("XNLI_SERVE_FUZZ_EXAMPLES", "40"))
SEED = os.environ.get("XNLI_SERVE_FUZZ_SEED", "20261126")
API_KEY = "fuzzing-key-0123456789"


@pytest.fixture(scope="module")
def keyed_server(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Two tiny torch variants behind an API key: the fuzzer sends the key, so it reaches every handler."""
    folder = tmp_path_factory.mktemp("keyed")
    catalogue = write_catalogue(folder / "variants.toml", demo_store, [{"name": "xlmr-mnli"}, {"name": "second"}])
    with running_server(catalogue, folder, extra_env={"XNLI_SERVE_API_KEYS": API_KEY}) as server:
        yield server


SELECTIONS = [
    # The model repository (/v2/repository/...) is left out: its load and unload change what the server serves, and
    # the fuzzer's fixed model name would unload the variant every other operation here is fuzzed against.
    pytest.param(["--exclude-path-regex", "/infer$|^/v2/repository/"], id="native-and-metadata-all-checks"),
    # Schema-valid tensors can still be semantically wrong (a FP32 premise, mismatched shapes): the protocol
    # answers those with 400, so "schema-valid data must be accepted" does not apply to infer.
    pytest.param(["--include-path-regex", "/infer$", "--exclude-checks", "positive_data_acceptance"], id="v2-infer"),
]


def fuzz(base_url: str, tmp_path: Path, selection: list[str], headers: tuple[str, ...] = ()) -> None:
    beside_python = Path(sys.executable).parent / "st"  # the venv's bin/, which CI does not put on PATH
    schemathesis = str(beside_python) if beside_python.exists() else shutil.which("st")
    assert schemathesis, "schemathesis is a dev dependency: pip install -e '.[dev]'"
    command = [
        schemathesis,
        "--config-file",
        str(CONFIG),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES),
        # One worker: concurrent hypothesis draws in threads hit a CPython 3.11 `ast` thread-safety crash
        # ("AST constructor recursion depth mismatch") inside the fuzzer itself.
        "--workers",
        "1",
        *[argument for header in headers for argument in ("--header", header)],
        *selection,
    ]
    if SEED:
        command += ["--seed", SEED]
    # Our own check (response size bounded by request size) runs beside Schemathesis' "all".
    check_log = tmp_path / "custom-checks.log"
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.support.fuzz_checks",
        "PYTHONPATH": str(REPO_ROOT),
        "XNLI_SERVE_FUZZ_CHECK_LOG": str(check_log),
    }
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env)
    (tmp_path / "schemathesis.log").write_text(result.stdout + result.stderr, encoding="utf-8")
    summary = [line for line in result.stdout.splitlines() if "generated" in line]
    print("\n".join(summary))
    assert result.returncode == 0, result.stdout[-6000:]
    assert summary
    ran = set(check_log.read_text(encoding="utf-8").split())
    assert ran == {"response_size_follows_request_size", "valid_data_refused_only_for_a_short_deadline"}
    assert httpx.get(f"{base_url}/health/live").status_code == 200


@pytest.mark.parametrize("selection", SELECTIONS)
def test_schema_fuzzing_finds_nothing(server: ServerProcess, tmp_path: Path, selection: list[str]) -> None:
    fuzz(server.base_url, tmp_path, selection)


@pytest.mark.parametrize("selection", SELECTIONS)
def test_schema_fuzzing_with_keys_finds_nothing(
    keyed_server: ServerProcess, tmp_path: Path, selection: list[str]
) -> None:
    """With keys on, every handler is still reached (the fuzzer sends the key) and behaves as documented."""
    fuzz(keyed_server.base_url, tmp_path, selection, (f"Authorization: Bearer {API_KEY}",))
