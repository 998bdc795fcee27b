"""The verdicts on a real service with injected faults: a variant that fails every tenth forward pass has a higher
error rate and is never called faster; in SLO mode a slow variant (50 ms per forward pass, batches of 4) has the
lower capacity and two names for one checkpoint are not told apart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests import compare
from loadtests.measurements import Samples
from tests.support.helpers import ServerProcess, running_server, write_catalogue

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def faulty_server(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("faulty")
    variants: list[dict[str, object]] = [
        {"name": "a1"},
        {"name": "a2"},
        {"name": "slow", "max_batch_size": 4, "faults": {"delay_ms": 50}},
        {"name": "flaky", "faults": {"fail_every": 10}},
    ]
    catalogue = write_catalogue(folder / "variants.toml", demo_store, variants, max_seq_len=128)
    with running_server(catalogue, folder, extra_env={"XNLI_SERVE_ENABLE_FAULT_INJECTION": "true"}) as server:
        yield server


def document(out: Path) -> dict[str, list[dict[str, object]]]:
    found: dict[str, list[dict[str, object]]] = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return found


@pytest.mark.slow  # a long end-to-end run: make test-slow
def test_a_failing_variant_has_a_higher_error_rate_and_is_never_faster(
    faulty_server: ServerProcess, tmp_path: Path
) -> None:
    out = tmp_path / "flaky"
    compare.main(
        ["--url", faulty_server.base_url, "--variants", "a1,flaky", "--users", "4", "--duration", "8",
         "--warmup", "1", "--out", str(out)]
    )  # fmt: skip
    found = {c["metric"]: c for c in document(out)["comparisons"]}
    assert found["error_rate"]["verdict"] == "higher", found["error_rate"]
    assert 0.03 < float(str(found["error_rate"]["difference"])) < 0.3  # about one request in ten
    for metric in ("p50_ms", "p95_tail", "p99_tail"):
        assert found[metric]["verdict"] != "faster", found[metric]
    rows = {row["variant"]: row for row in document(out)["results"]}
    assert int(str(rows["flaky"]["failures"])) > 0
    assert float(str(rows["flaky"]["p99_ms"])) >= 10_000  # unanswered requests count as lasting the timeout


@pytest.mark.slow
def test_slo_mode_finds_the_slow_variant_lower_and_twins_not_different(
    faulty_server: ServerProcess, tmp_path: Path
) -> None:
    out = tmp_path / "slo"
    # Eight pairs a request: `slow` runs each request as two batches of 4 (100 ms of delay), so its capacity is an
    # eighth of a pair-per-request run's in requests/s, while the twins' (whose cost is mostly per request on the tiny
    # checkpoint) barely moves. p95 rather than p99: 0 violations in about 145 requests show a p95 term met, a p99 term
    # needs about 760 (with 4 rounds of 2 s, a twin had to be shown met at 95 requests/s or more). Both shown limits
    # are then far apart: `slow` is shown broken at 20 requests/s (160 pairs/s), the twins met at 40 or more (320
    # pairs/s; quiet, they held 160 requests/s, 1,270 pairs/s, also with one or both cores kept busy by a burner).
    compare.main(
        ["--url", faulty_server.base_url, "--mode", "slo", "--slo", "p95<=250ms", "--slo", "errors<=5%",
         "--variants", "a1,a2,slow", "--pairs-per-request", "8", "--start-rate", "20", "--slo-steps", "3",
         "--rounds", "4", "--block-seconds", "2", "--warmup", "1", "--peak-rps", "100", "--price-per-hour", "0.1",
         "--hardware", "2 vCPU", "--out", str(out)]
    )  # fmt: skip
    results = document(out)
    capacity = {str(c["variant"]): c for c in results["capacity"]}
    assert set(capacity) == {"a1", "a2", "slow"}
    for entry in capacity.values():
        for key in ("slo", "rate", "ci_low", "ci_high", "p_latency_ms_at_rate", "error_rate_at_rate",
                    "cost_per_million"):  # fmt: skip
            assert key in entry
        assert entry["pairs_per_request"] == 8
    # `slow` saturates its device (50 ms a batch): whatever the generator manages, its limit is the service's, and
    # the service's own metrics say so (it was once judged generator-bound, and a lower bound is never "lower").
    assert not capacity["slow"]["generator_bound"], capacity["slow"]
    verdicts = {(c["a"], c["b"], c["metric"]): c["verdict"] for c in results["comparisons"]}
    assert verdicts[("a1", "slow", "capacity")] == verdicts[("a2", "slow", "capacity")] == "lower", capacity
    # No run may invent a difference between two names for one checkpoint. A CI run once found a2 "higher" than a1:
    # `slow`'s backlog ran on into the next block and a1 followed `slow` more often than a2 did. Every block now ends
    # in a quiet gap as long as the client's timeout (1 s, from the SLO's 250 ms), and the run checks it.
    assert verdicts[("a1", "a2", "capacity")] not in {"higher", "lower"}
    parameters = json.loads((out / "results.json").read_text(encoding="utf-8"))["parameters"]
    assert parameters["request_timeout"] == parameters["block_gap"] == 1.0
    for path in sorted((out / "locust").glob("slo-step-*_samples.json")):
        step = Samples.read_all(path)
        assert step.schedule_start is not None
        ended = step.start + step.censored_ms() / 1000
        next_block = step.schedule_start + (step.block + 1) * (step.block_seconds + step.block_gap)
        late = ended - next_block
        assert late[step.block >= 0].max() < 0.5, (path.name, late.max())  # the gap let every request end
    assert (out / "latency_vs_rate.png").stat().st_size > 0
    assert "## Fleet and cost" in (out / "report.md").read_text(encoding="utf-8")
