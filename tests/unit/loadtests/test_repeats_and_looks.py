"""--repeats, --until-decided and --plan end to end without a server: a fake Locust writes what a service with a
known per-run state would have answered, and a fake local server counts its restarts."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from statistics import NormalDist
from typing import Any

import httpx
import numpy as np
import pytest

from loadtests import analysis, compare, repeats, report, sequential, stats
from loadtests.measurements import SAMPLE_COLUMNS, Samples
from loadtests.stats import balanced_block_order


class FakeService:
    """Variants with a base latency, a per-process state drawn at every (re)start, and request noise."""

    def __init__(self, latency_ms: dict[str, float], state_sd: float = 0.0, noise_sd: float = 0.3) -> None:
        self.latency_ms = latency_ms
        self.state_sd = state_sd
        self.noise_sd = noise_sd
        self.generator = np.random.default_rng(3)
        self.starts = 0
        self.calls: list[tuple[float, float]] = []  # (level, seconds) per Locust run
        self.restart()

    def restart(self) -> None:
        self.starts += 1
        self.state = {name: self.generator.normal(0.0, self.state_sd) for name in self.latency_ms}

    def run_locust(self, load: compare.LoadSettings, level: float, seconds: float, prefix: Path, seed: int,
                   block_order: list[str] | None = None, block_seconds: float = 0.0, open_loop: Any = None,
                   ) -> float:  # fmt: skip
        self.calls.append((level, seconds))
        n = int(40 * seconds)
        variants = load.variants
        codes = self.generator.integers(0, len(variants), n)
        start = 1000.0 * len(self.calls) + np.sort(self.generator.uniform(0, seconds, n))
        base = np.array([self.latency_ms[name] * math.exp(self.state[name]) for name in variants])
        latency = base[codes] * np.exp(self.generator.normal(0.0, self.noise_sd, n))
        rows = np.column_stack(
            [start, codes, latency, np.zeros(n), latency / 2, np.ones(n), -np.ones(n), np.zeros(n), np.full(n, 200)]
        )
        document = {
            "columns": SAMPLE_COLUMNS, "variants": variants, "schedule": "interleaved", "schedule_start": None,
            "block_seconds": 0.0, "block_order": [], "timeout_s": 10.0, "rows": rows.tolist(),
        }  # fmt: skip
        Path(f"{prefix}_samples.json").write_text(json.dumps(document), encoding="utf-8")
        return 0.1


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> FakeService:
    fake = FakeService({"a": 20.0, "b": 20.0})
    monkeypatch.setattr(compare, "run_locust", fake.run_locust)
    monkeypatch.setattr(compare, "scrape", lambda client: {})
    monkeypatch.setattr(report, "plots", lambda *args: [])  # the figures have their own tests; seconds saved here
    metadata = {name: {"name": name} for name in ("a", "b")}
    monkeypatch.setattr(compare, "served_variants", lambda client, url, wanted: (["a", "b"], metadata))

    @contextlib.contextmanager
    def local_server(catalogue: Path, log: Path) -> Iterator[Any]:
        fake.restart()
        yield type("Server", (), {"base_url": "http://127.0.0.1:9"})()

    monkeypatch.setattr(compare, "local_server", local_server)
    monkeypatch.setattr(httpx, "Client", lambda **kwargs: contextlib.nullcontext())
    return fake


def document(out: Path) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return found


def test_repeats_restart_the_service_and_rest_on_run_level_differences(service: FakeService, tmp_path: Path) -> None:
    service.state_sd = 0.05
    service.starts = 0
    out = tmp_path / "repeats"
    compare.main(["--repeats", "3", "--users", "4", "--duration", "10", "--warmup", "0", "--out", str(out)])
    assert service.starts == 3  # one fresh service per run
    found = document(out)
    assert len(found["runs"]) == 3
    assert sorted({row["run"] for row in found["results"]}) == [1, 2, 3]
    median = next(c for c in found["comparisons"] if c["metric"] == "p50_ms")
    per_run = [next(c for c in run if c["metric"] == "p50_ms") for run in found["runs"]]
    assert median["runs"] == median["blocks"] == 3
    assert median["difference"] == pytest.approx(np.mean([c["difference"] for c in per_run]))
    assert median["within_variance"] == pytest.approx(np.mean([c["standard_error"] ** 2 for c in per_run]))
    spread = np.var([c["difference"] for c in per_run], ddof=1)
    assert median["between_variance"] == pytest.approx(max(0.0, spread - median["within_variance"]))
    assert "restarted" in median["note"]
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Between runs" in report
    assert "3 runs, the service restarted in between" in report
    assert (out / "server-3.log").parent.exists()


def test_repeats_on_a_url_say_there_was_no_restart(service: FakeService, tmp_path: Path) -> None:
    service.starts = 0
    out = tmp_path / "url"
    compare.main(
        ["--url", "http://127.0.0.1:9", "--repeats", "2", "--users", "4", "--duration", "6", "--warmup", "0",
         "--out", str(out)]
    )  # fmt: skip
    assert service.starts == 0
    median = next(c for c in document(out)["comparisons"] if c["metric"] == "p50_ms")
    assert "without restart" in median["note"]
    assert "without restart (--url)" in (out / "report.md").read_text(encoding="utf-8")


def test_until_decided_stops_at_the_first_look_where_every_verdict_is_decided(
    service: FakeService, tmp_path: Path
) -> None:
    service.latency_ms = {"a": 20.0, "b": 40.0}  # b twice as slow: decided on every metric as soon as allowed
    service.noise_sd = 0.05
    out = tmp_path / "decided"
    compare.main(
        ["--url", "http://127.0.0.1:9", "--until-decided", "--duration", "10", "--max-duration", "60", "--users", "4",
         "--warmup", "0", "--out", str(out)]
    )  # fmt: skip
    found = document(out)["comparisons"]
    looks = {c["look"] for c in found}
    assert {c["looks"] for c in found} == {6}
    assert len(looks) == 1
    assert looks.pop() < 6
    assert len(service.calls) == found[0]["look"]  # one Locust run per look taken
    assert {c["verdict"] for c in found} != {"inconclusive"}
    median = next(c for c in found if c["metric"] == "p50_ms")
    assert median["verdict"] == "slower"
    assert "alpha spending" in median["note"]


def test_until_decided_goes_on_while_a_verdict_is_open(service: FakeService, tmp_path: Path) -> None:
    service.latency_ms = {"a": 20.0, "b": 21.0}  # 5%: at the margin, so neither equivalent nor different soon
    service.noise_sd = 0.8
    out = tmp_path / "open"
    compare.main(
        ["--url", "http://127.0.0.1:9", "--until-decided", "--duration", "5", "--max-duration", "15", "--users", "4",
         "--warmup", "0", "--out", str(out)]
    )  # fmt: skip
    found = document(out)["comparisons"]
    assert {c["look"] for c in found} == {3}
    assert len(service.calls) == 3
    rows = {row["variant"]: row for row in document(out)["results"]}
    assert rows["a"]["requests"] + rows["b"]["requests"] == 40 * 15  # every look's requests analysed together


def test_plan_from_a_pilot_scales_the_duration_with_the_squared_standard_error(
    service: FakeService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pilot = tmp_path / "pilot"
    compare.main(
        ["--url", "http://127.0.0.1:9", "--users", "4", "--duration", "10", "--warmup", "0", "--out", str(pilot)]
    )  # fmt: skip
    capsys.readouterr()
    compare.main(["--plan", "--pilot", str(pilot), "--margin", "0.02", "--out", str(tmp_path / "plan")])
    printed = capsys.readouterr().out
    assert "Plan for a margin of 2.0%" in printed
    median = repeats.comparison_from(next(c for c in document(pilot)["comparisons"] if c["metric"] == "p50_ms"))
    (row,) = repeats.plan([median], 10.0, 0, 0.02)
    z = NormalDist().inv_cdf(1 - (1 - median.confidence) / 2) + NormalDist().inv_cdf(stats.POWER)
    expected = 10.0 * (median.standard_error * z / (0.02 * median.baseline)) ** 2
    assert row.duration_s == pytest.approx(expected)
    assert f"{expected:.0f} s per level (pilot 10 s)" in printed
    assert (tmp_path / "plan" / "plan.md").read_text(encoding="utf-8").startswith("# Plan for a margin of 2.0%")


def test_a_plan_from_repeats_says_how_many_runs() -> None:
    base = stats.comparison("a", "b", "p50_ms", 4, stats.Verdict("inconclusive", 0.5, -1, 2, 20.0, 1.0, 3, 0.3, 2),
                            0.05, stats.INTERLEAVED)  # fmt: skip
    c = replace(base, runs=3, within_variance=0.01, between_variance=0.99)
    (row,) = repeats.plan([c], 20.0, 0, 0.05)
    assert row.repeats == repeats.runs_needed(1.0, 1.0, 0.05)
    assert 8 <= row.repeats <= 12  # (t + t)^2 x 1 / 1^2 with t near 2.2 and 0.9
    assert row.duration_s < 20.0  # within-run noise alone would allow a shorter run: more runs are the need


def test_joined_capacity_looks_keep_whole_rounds() -> None:
    order = balanced_block_order(["a", "b"], 2)
    parts = []
    for look in range(2):
        start = 100.0 + look * 50 + np.repeat(np.arange(4), 10) + np.tile(np.linspace(0.2, 0.9, 10), 4)
        n = len(start)
        codes = np.array([["a", "b"].index(order[i // 10]) for i in range(n)])
        part = Samples(
            ["a", "b"], start, codes, np.full(n, 10.0), np.zeros(n), np.zeros(n), np.ones(n, dtype=bool),
            np.arange(n) // 10, 100.0 + look * 50, 1.0, order,
        )  # fmt: skip
        parts.append(part)
    joined = Samples.joined(parts)
    assert joined.block_order == order + order
    assert sorted(set(joined.block.tolist())) == list(range(8))
    assert joined.measured() is joined  # already cut to its measured part
    found = compare.level_comparisons("capacity", 4, joined, 0.05, 0.05, None, 1)
    assert {c.blocks for c in found} == {4}  # rounds over both looks


def test_correlated_looks_each_get_more_than_a_bonferroni_split() -> None:
    nominal = sequential.nominal_alphas(sequential.fractions_for(5), 0.01, "pocock")
    assert all(0 < level < 0.01 for level in nominal)
    assert sum(nominal) > 0.01  # correlated looks: each may take more than a Bonferroni split would give


@pytest.mark.parametrize(
    "arguments",
    [["--repeats", "0"], ["--until-decided", "--duration", "10"], ["--mode", "slo", "--slo", "p99<=1s", "--repeats",
     "2"], ["--pilot", "x"]],
)  # fmt: skip
def test_nonsense_arguments_are_refused(arguments: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        compare.main(["--url", "http://127.0.0.1:1", *arguments])
    assert caught.value.code == 2


def test_a_variant_that_fails_more_is_never_called_faster() -> None:
    """What the real service showed (fail_every = 10): a variant whose failed batches free the device answers the
    rest a little sooner, so even with its failures censored at the timeout its median can come out lower. It
    fails more, so it is not called faster: the latency verdict is withheld, with the reason, and the numbers
    stay. Run-level combination (--repeats) and the looks keep the rule."""
    generator = np.random.default_rng(9)
    n = 6000
    codes = np.tile([0, 1], n // 2)
    failed = (codes == 1) & (generator.random(n) < 0.1)
    latency = 20.0 * np.exp(generator.normal(0.0, 0.1, n)) * np.where(codes == 1, 0.8, 1.0)
    latency = np.where(failed, 10_000.0, latency)
    found = analysis.compare_interleaved(
        ["a", "b"], 4, np.linspace(0, 60, n), codes, latency, failed=failed, metrics=analysis.METRICS
    )
    verdicts = {c.metric: c for c in found}
    assert verdicts["error_rate"].verdict == "higher"
    assert verdicts["p50_ms"].difference < 0  # b's median is lower, failures counted
    assert verdicts["p50_ms"].verdict == "inconclusive"
    assert analysis.FAILS_MORE in verdicts["p50_ms"].note
    assert sequential.decided(found)  # withheld is a decision: the looks stop
    assert "b not called faster: it fails more" in report.verdict_sentence(verdicts["p50_ms"])
    combined = repeats.combine([found, found], 0.05, restarted=True)
    assert next(c for c in combined if c.metric == "p50_ms").verdict == "inconclusive"
