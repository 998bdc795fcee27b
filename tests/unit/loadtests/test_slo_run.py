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

MU = {"fast": 400.0, "twin": 400.0, "slow": 150.0, "flaky": 400.0}  # M/M/1 service rates per variant


def fake_locust(
    generator: np.random.Generator,
    variants: list[str],
    fail_share: dict[str, float],
    short: float = 1.0,
    mu: dict[str, float] | None = None,
    cap: float = math.inf,
) -> slo_run.Runner:
    """Writes what a run against M/M/1 variants would have recorded: Poisson arrivals at each block's rate (only
    ``short`` of them sent, and at most ``cap`` per second: a load generator that cannot keep up), each block from
    an empty queue."""
    rates_of = mu or MU

    def run(prefix: Path, seed: int, order: list[str], block_seconds: float, schedule: slo_run.OpenLoop,
            seconds: float) -> float:  # fmt: skip
        rows = []
        for block, (name, rate) in enumerate(zip(order, schedule.block_rates, strict=True)):
            sent = min(rate * short, cap)
            arrivals = np.cumsum(generator.exponential(1 / sent, int(rate * block_seconds * 2 + 20)))
            arrivals = arrivals[arrivals < block_seconds]
            service = generator.exponential(1 / rates_of[name], len(arrivals))
            wait, sojourn = 0.0, []
            for index in range(len(arrivals)):
                if index:
                    wait = max(0.0, wait + service[index - 1] - (arrivals[index] - arrivals[index - 1]))
                sojourn.append((wait + service[index]) * 1000)
            failed = generator.random(len(arrivals)) < fail_share.get(name, 0.0)
            for start, latency, lost in zip(arrivals, sojourn, failed, strict=True):
                outcome = outcomes.FAILED if lost else outcomes.SUCCESS
                rows.append([100.0 + block * block_seconds + start, variants.index(name), latency,
                             1.0 if sent == rate else 0.0, latency / 2, 0 if lost else 1, block, outcome,
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


def test_the_generators_cpu_per_block_from_a_trace() -> None:
    # 0.5 s of CPU per second in the first two blocks, 0.9 in the last; the trace read every 0.1 s
    times = np.arange(0.0, 3.05, 0.1) + 1000.0
    used = np.where(times <= 1002.0, (times - 1000.0) * 0.5, 1.0 + (times - 1002.0) * 0.9)
    blocks = slo_run.block_cpu(list(zip(times.tolist(), used.tolist(), strict=True)), 1000.0, 1.0, 3)
    assert blocks == pytest.approx([0.5, 0.5, 0.9])
    assert slo_run.block_cpu(list(zip(times.tolist(), used.tolist(), strict=True)), 1000.0, 1.0, 3, 2) == (
        pytest.approx([0.25, 0.25, 0.45])  # two processes: per process
    )
    assert slo_run.block_cpu([(1000.0, 0.0), (1001.0, 1.0)], 1000.0, 1.0, 3) == []  # the trace ends too soon
    # blocks of 0.5 s with 0.5 s quiet gaps: each block's own CPU, not its gap's
    gapped = np.where((times - 1000.0) % 1.0 < 0.5, 0.8, 0.1)  # CPU per second in each 0.1 s step
    gapped_used = np.concatenate([[0.0], np.cumsum(gapped[:-1] * 0.1)])
    trace = list(zip(times.tolist(), gapped_used.tolist(), strict=True))
    assert slo_run.block_cpu(trace, 1000.0, 0.5, 3, 1, 0.5) == pytest.approx([0.8, 0.8, 0.8])
    assert slo_run.OpenLoop([1.0] * 3, 4, 1000.0, 1, 0.5).seconds(0.5, 3) == pytest.approx(2.5)
    load = slo_run.StepLoad(0.3, [0.5, 0.2, 0.9, 0.4], {})
    assert load.generator_cpu(["a", "b", "a", "b"], "a") == pytest.approx(0.7)
    assert slo_run.StepLoad(0.3).generator_cpu(["a", "b"], "a") == 0.3  # not measured per block: the run's


def test_the_services_account_of_each_variant_from_two_scrapes() -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from loadtests.scrape import parse

    registry = CollectorRegistry()
    buckets = (0.01, 0.1, 1.0)
    queue = Histogram("xnli_queue_duration_seconds", "q", ["variant"], buckets=buckets, registry=registry)
    request = Histogram("xnli_request_duration_seconds", "r", ["variant", "endpoint"], buckets=buckets,
                        registry=registry)  # fmt: skip
    device = Histogram("xnli_inference_duration_seconds", "i", ["variant"], buckets=buckets, registry=registry)
    queue.labels("slow").observe(0.5)
    before = parse(generate_latest(registry).decode())
    for _ in range(10):  # slow: 10 requests, 40 ms waiting and 120 ms inside each; 9 batches of 50 ms
        queue.labels("slow").observe(0.04)
        request.labels("slow", "/predict").observe(0.12)
    for _ in range(9):
        device.labels("slow").observe(0.05)
    request.labels("fast", "/predict").observe(0.01)
    after = parse(generate_latest(registry).decode())
    found = slo_run.service_loads(before, after, ["slow", "fast", "fast", "slow"], 0.25)
    slow = found["slow"]
    assert slow.seconds == 0.5
    assert slow.requests == 10
    assert slow.queue_s == pytest.approx(0.4)
    assert slow.service_s == pytest.approx(1.2)
    assert slow.busy == pytest.approx(0.9)
    assert slow.queues  # the device busy 90% of the variant's time
    assert found["fast"].service_s == pytest.approx(0.01)


def test_a_short_rate_on_a_service_that_queues_is_not_the_generators(tmp_path: Path) -> None:
    """The generator sends at most 120 requests/s, its CPU saturated in the blocks it falls short in, and each step
    reports the service's own account (the simulated queue's waiting and busy time). The twins (M/M/1 at 1000/s)
    sit idle there: their shortfall is the generator's, "at least". `slow` (200/s) queues there: its shortfall is
    the service's even with the generator saturated, the SLO broke, and its capacity is an estimate."""
    terms = [slo.parse_term("p99<=50ms"), slo.parse_term("errors<=1%")]
    mu = {"fast": 1000.0, "twin": 1000.0, "slow": 200.0}
    inner = fake_locust(np.random.default_rng(7), list(mu), {}, mu=mu, cap=120.0)

    def run(prefix: Path, seed: int, order: list[str], block_seconds: float, schedule: slo_run.OpenLoop,
            seconds: float) -> slo_run.StepLoad:  # fmt: skip
        inner(prefix, seed, order, block_seconds, schedule, seconds)
        service = {}
        for name in dict.fromkeys(order):
            sent = min(120.0, schedule.block_rates[order.index(name)])
            rho = sent / mu[name]  # M/M/1: busy rho of the time; waiting rho of a request's time inside
            time = block_seconds * order.count(name)
            count = sent * time
            inside = count / (mu[name] - sent)
            service[name] = slo.ServiceLoad(time, count, rho * inside, inside, rho * time)
        cpu = [0.95 if rate > 120.0 else 0.3 for rate in schedule.block_rates]
        return slo_run.StepLoad(float(np.mean(cpu)), cpu, service)

    searches, steps, _ = slo_run.run_search(
        run, list(mu), terms, tmp_path, start_rate=40.0, steps=5, rounds=4, block_seconds=2.0, processes=1, seed=0,
        alpha=0.05 / 9, timeout_s=10.0,
    )  # fmt: skip
    found = slo_run.capacities(searches, "p99<=50ms", 1, 0.0, 0.0, 0.7, "")
    by_name = {c.variant: c for c in found}
    assert not by_name["slow"].generator_bound
    assert by_name["fast"].generator_bound
    assert by_name["twin"].generator_bound
    assert "its CPU was saturated" in by_name["fast"].note
    queued = [p for p in searches["slow"].points if p.short]
    assert queued
    assert all("service-bound" in p.why and p.generator_cpu == 0.95 for p in queued)
    assert "service-bound" in by_name["slow"].note
    words = {(c.a, c.b, c.metric): c.verdict for c in slo_run.pair_comparisons(found, steps, 4, 0.05, 0.05 / 9, 0)}
    assert words[("fast", "slow", "capacity")] in {"lower", "inconclusive"}  # the twins' "at least" is near slow's
    assert words[("twin", "slow", "capacity")] in {"lower", "inconclusive"}  # own break: never higher/equivalent
    assert words[("fast", "twin", "capacity")] == "inconclusive"
