"""--repeats and --until-decided on the real service: two names for one checkpoint, the service started afresh for
every run; a variant with a known delay found slower before the most allowed time, and --plan beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtests import compare
from tests.support.helpers import ServerProcess, running_server, write_catalogue

# Real-service runs of --repeats (a restart per run) and --until-decided: long, so in `make test-slow`; the
# calibration of both is in tests/unit/loadtests (make test).
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def document(out: Path) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return found


def test_repeats_restart_the_service_and_twins_stay_apart_from_faster(
    demo_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalogue = write_catalogue(tmp_path / "variants.toml", demo_store, [{"name": "a1"}, {"name": "a2"}])
    monkeypatch.setenv("XNLI_SERVE_TORCH_THREADS", "1")
    out = tmp_path / "repeats"
    compare.main(
        ["--catalogue", str(catalogue), "--variants", "a1,a2", "--repeats", "2", "--users", "4", "--duration", "4",
         "--warmup", "1", "--out", str(out)]
    )  # fmt: skip
    for run in (1, 2):  # one service process per run, each with its own log
        assert (out / f"server-{run}.log").stat().st_size > 0
    found = document(out)
    assert len(found["runs"]) == 2
    assert sorted({row["run"] for row in found["results"]}) == [1, 2]
    for comparison in found["comparisons"]:
        assert comparison["runs"] == 2
        assert comparison["verdict"] not in {"faster", "slower", "higher", "lower"}, comparison
        assert "restarted" in comparison["note"]
    median = next(c for c in found["comparisons"] if c["metric"] == "p50_ms")
    assert median["within_variance"] > 0
    assert "## Between runs" in (out / "report.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def delayed_server(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("delayed")
    variants: list[dict[str, object]] = [{"name": "a1"}, {"name": "delayed", "faults": {"delay_ms": 40}}]
    catalogue = write_catalogue(folder / "variants.toml", demo_store, variants)
    with running_server(catalogue, folder, extra_env={"XNLI_SERVE_ENABLE_FAULT_INJECTION": "true"}) as server:
        yield server


def test_until_decided_finds_a_known_delay_and_plans(
    delayed_server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "looks"
    compare.main(
        ["--url", delayed_server.base_url, "--variants", "a1,delayed", "--users", "4", "--until-decided",
         "--duration", "4", "--max-duration", "16", "--warmup", "1", "--plan", "--out", str(out)]
    )  # fmt: skip
    found = {c["metric"]: c for c in document(out)["comparisons"]}
    assert found["p50_ms"]["verdict"] == "slower", found["p50_ms"]
    assert found["p50_ms"]["looks"] == 4
    assert 1 <= found["p50_ms"]["look"] <= 4
    assert found["error_rate"]["verdict"] in {"equivalent", "inconclusive"}
    printed = capsys.readouterr().out
    assert "Plan for a margin of 5.0%" in printed
    assert (out / "plan.md").stat().st_size > 0
    assert "## Looks" in (out / "report.md").read_text(encoding="utf-8")
