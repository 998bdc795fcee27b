"""Schemathesis against the live OpenAPI schema: no 5xx, every response as documented, bad input refused."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers import ServerProcess

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).with_name("schemathesis.toml")
# CI runs a bounded, seeded sample; `make fuzz` runs many more examples with a fresh seed.
EXAMPLES = int(os.environ.get("XNLI_SERVE_FUZZ_EXAMPLES", "40"))
SEED = os.environ.get("XNLI_SERVE_FUZZ_SEED", "20261126")


def test_schema_fuzzing_finds_nothing(server: ServerProcess, tmp_path: Path) -> None:
    schemathesis = shutil.which("st") or shutil.which("schemathesis")
    assert schemathesis, "schemathesis is a dev dependency: pip install -e '.[dev]'"
    command = [
        schemathesis,
        "--config-file",
        str(CONFIG),
        "run",
        f"{server.base_url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES),
        "--workers",
        "2",
    ]
    if SEED:
        command += ["--seed", SEED]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    (tmp_path / "schemathesis.log").write_text(result.stdout + result.stderr, encoding="utf-8")
    summary = [line for line in result.stdout.splitlines() if "generated" in line]
    print("\n".join(summary))
    assert result.returncode == 0, result.stdout[-6000:]
    assert summary
    assert httpx.get(f"{server.base_url}/health/live").status_code == 200
