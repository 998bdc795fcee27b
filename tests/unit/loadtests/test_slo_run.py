"""SLO mode end to end without a server: a fake Locust that writes the samples file a simulated service would have
answered, the search over it, the capacities, verdicts, results.json and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from loadtests import outcomes, slo, slo_run
from loadtests.measurements import SAMPLE_COLUMNS

MU = {"fast": 400.0, "twin": 400.0, "slow": 200.0, "flaky": 400.0}  # M/M/1 service rates per variant


def fake_locust(
    generator: np.random.Generator, variants: list[str], fail_share: dict[str, float], short: float = 1.0
) -> slo_run.Runner:
    """Writes what a run against M/M/1 variants would have recorded: Poisson arrivals at each block's rate (only
    ``short`` of them sent: a load generator that cannot keep up), each block from an empty queue."""

    def run(prefix: Path, seed: int, order: list[str], block_seconds: float, schedule: slo_run.OpenLoop,
            seconds: float) -> float:  # fmt: skip
        rows = []
        for block, (name, rate) in enumerate(zip(order, schedule.block_rates, strict=True)):
            arrivals = np.cumsum(generator.exponential(1 / (rate * short), int(rate * block_seconds * 2 + 20)))
            arrivals = arrivals[arrivals < block_seconds]
            service = generator.exponential(1 / MU[name], len(arrivals))
            wait, sojourn = 0.0, []
            for index in range(len(arrivals)):
                if index:
                    wait = max(0.0, wait + service[index - 1] - (arrivals[index] - arrivals[index - 1]))
                sojourn.append((wait + service[index]) * 1000)
            failed = generator.random(len(arrivals)) < fail_share.get(name, 0.0)
            for start, latency, lost in zip(arrivals, sojourn, failed, strict=True):
                outcome = outcomes.FAILED if lost else outcomes.SUCCESS
                rows.append([100.0 + block * block_seconds + start, variants.index(name), latency,
                             1.0 if short == 1.0 else 0.0, latency / 2, 0 if lost else 1, block, outcome,
                             500 if lost else 200])  # fmt: skip
        document = {
            "columns": SAMPLE_COLUMNS, "variants": variants, "schedule": "blocks", "schedule_start": 100.0,
            "block_seconds": block_seconds, "block_order": order, "block_rates": schedule.block_rates,
            "timeout_s": 10.0, "rows": rows,
        }  # fmt: skip
        Path(f"{prefix}_samples.json").write_text(json.dumps(document), encoding="utf-8")
        return 0.2

    return run


def search(tmp_path: Path, variants: list[str], fail_share: dict[str, float] | None = None, short: float = 1.0,
           price: float = 0.0, peak: float = 0.0) -> slo_run.SloOutcome:  # fmt: skip
    terms = [slo.parse_term("p99<=50ms"), slo.parse_term("errors<=1%")]
    searches, steps, cpu = slo_run.run_search(
        fake_locust(np.random.default_rng(5), variants, fail_share or {}, short), variants, terms, tmp_path,
        start_rate=40.0, steps=6, rounds=4, block_seconds=2.0, processes=1, seed=0, alpha=0.05, timeout_s=10.0,
    )  # fmt: skip
    found = slo_run.capacities(searches, "p99<=50ms, errors<=1%", 2, price, peak, 0.7, "2 vCPU")
    comparisons = slo_run.pair_comparisons(found, steps, 4, 0.05, 0.05, 0)
    return slo_run.SloOutcome(terms, found, comparisons, {v: s.points for v, s in searches.items()}, cpu)


def test_a_slow_variant_has_a_lower_capacity_and_twins_are_not_told_apart(tmp_path: Path) -> None:
    outcome = search(tmp_path, ["fast", "twin", "slow"], price=0.36, peak=1000.0)
    found = {c.variant: c for c in outcome.capacities}
    for name, mu in MU.items():  # M/M/1: the p99 of the time in system is ln(100) / (mu - lambda)
        if name in found:
            truth = 2 * (mu - math.log(100) / 0.05)  # pairs/s: 2 pairs per request
            assert found[name].rate == pytest.approx(truth, rel=0.3)  # one search (test_slo calibrates 300)
            assert found[name].ci_low <= found[name].rate <= found[name].ci_high
    words = {(c.a, c.b, c.metric): c.verdict for c in outcome.comparisons}
    assert words[("fast", "slow", "capacity")] == "lower"
    assert words[("twin", "slow", "capacity")] == "lower"
    assert words[("fast", "twin", "capacity")] in {"equivalent", "inconclusive"}
    assert {c.metric for c in outcome.comparisons} == {"capacity", "error_rate", "p95_tail", "p99_tail"}
    slow = found["slow"]
    assert slow.cost_per_million == pytest.approx(0.36 / (3600 * slow.rate) * 1e6)
    assert slow.cost_ci_low <= slow.cost_per_million <= slow.cost_ci_high
    assert slow.replicas == math.ceil(1000 / (slow.rate * 0.7))
    slo_run.write(outcome, tmp_path, {"price_per_hour": 0.36, "peak_rps": 1000.0, "utilisation": 0.7})
    document = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    for entry in document["capacity"]:
        for key in ("variant", "slo", "rate", "ci_low", "ci_high", "p_latency_ms_at_rate", "error_rate_at_rate",
                    "cost_per_million"):  # fmt: skip
            assert key in entry
    assert {c["metric"] for c in document["comparisons"]} >= {"capacity", "error_rate", "p99_tail"}
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Fleet and cost" in report
    assert "slow vs fast, capacity at the SLO: lower" in report
    assert (tmp_path / "latency_vs_rate.png").stat().st_size > 0


def test_a_failing_variant_breaks_the_error_budget_and_fails_more(tmp_path: Path) -> None:
    outcome = search(tmp_path, ["fast", "flaky"], {"flaky": 0.1})
    found = {c.variant: c for c in outcome.capacities}
    assert found["flaky"].rate < 0.1 * found["fast"].rate  # it met the budget only where it sent too few to fail
    assert found["flaky"].ci_low == 0.0
    words = {c.metric: c.verdict for c in outcome.comparisons}
    assert words["error_rate"] == "higher"
    assert words["capacity"] == "lower"


def test_a_generator_that_cannot_keep_up_gives_at_least(tmp_path: Path) -> None:
    outcome = search(tmp_path, ["fast", "twin"], short=0.5)  # half the offered rate goes out, queues stay empty
    for capacity in outcome.capacities:
        assert capacity.generator_bound
        assert capacity.ci_high == math.inf
        assert "generator-bound: at least" in capacity.note
    (verdict,) = [c for c in outcome.comparisons if c.metric == "capacity"]
    assert verdict.verdict == "inconclusive"  # two lower bounds say nothing about which is higher
