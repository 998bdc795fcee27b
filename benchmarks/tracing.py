"""What tracing costs per request: the same HTTP-bound load on the service with tracing off and on, interleaved.

    python -m benchmarks.tracing --catalogue /tmp/store/variants.toml --rounds 5 --seconds 4

Starts one ``xnli-serve serve`` per mode, all on the same catalogue with one torch thread: ``off`` (no endpoint),
``off-twin`` (the same again: the spread of off against off is the noise), ``sampled-1.0`` and ``sampled-0.01``
(``OTEL_TRACES_SAMPLER=traceidratio``), the traced ones exporting over OTLP/HTTP to a local receiver in a process of
its own (``app.tracing.receiver``, which decodes every span). Alternates ``--seconds`` closed-loop rounds of
single-pair /predict requests between them (the asyncio-stream client of benchmarks.frontend), the order rotating
each round. Prints each round's requests/s and p50/p99 per mode, the median per-round ratio of each mode to ``off``,
and the spans received; writes JSON (--out).

First, in this process and without a server, the CPU one request's tracing costs (``--micro``): the spans the HTTP
middleware, the prediction service and the engine make for a request and one device batch, timed with tracing off
(the guards alone), at ratio 0.01 and at 1.0 (exporting to the same receiver). On a shared machine these microseconds
are steadier than a throughput ratio.
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import orjson
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind

from app.local_server import LocalServer, local_server
from app.tracing import STATE, exemplar, propagation, spans
from benchmarks.common import argument_parser, machine, print_machine, write_json
from benchmarks.frontend import Share, closed_loop

PAIR = {"premise": "The ferry left the harbour at dawn.", "hypothesis": "A boat departed early in the morning."}
BASELINE = "off"
MODES = ("off", "off-twin", "sampled-1.0", "sampled-0.01")


def modes(endpoint: str) -> dict[str, dict[str, str]]:
    traced = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_TRACES_SAMPLER": "traceidratio"}
    return {
        "off": {},
        "off-twin": {},
        "sampled-1.0": {**traced, "OTEL_TRACES_SAMPLER_ARG": "1.0"},
        "sampled-0.01": {**traced, "OTEL_TRACES_SAMPLER_ARG": "0.01"},
    }


def _serve_receiver(ports: Any, stop: Any) -> None:
    from app.tracing.receiver import OtlpReceiver

    receiver = OtlpReceiver().start()
    ports.put(receiver.endpoint)
    stop.wait()
    ports.put((len(receiver.spans), receiver.requests))
    receiver.close()


@contextmanager
def receiver_process() -> Iterator[tuple[str, Any]]:
    """An OTLP receiver in its own process (decoding spans must not slow the client); yields its endpoint and a
    function returning (spans, export requests) received, to call once at the end."""
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    stop = context.Event()
    process = context.Process(target=_serve_receiver, args=(ports, stop), daemon=True)
    process.start()
    endpoint = ports.get(timeout=60)

    def received() -> tuple[int, int]:
        stop.set()
        counts: tuple[int, int] = ports.get(timeout=30)
        return counts

    try:
        yield endpoint, received
    finally:
        stop.set()
        process.join(10)


def micro_request() -> None:
    """What one single-pair request does with tracing, call site by call site (app.api.middleware,
    app.service.prediction, app.engine.engine, app.engine.scheduler.pipeline), each behind the same guard."""
    if not STATE.active:  # the middleware is not even installed; the service, engine, batch and queue guards
        for _ in range(4):
            if STATE.active:
                raise AssertionError
        return
    server = STATE.tracer.start_span("POST", context=propagation.extract({}), kind=SpanKind.SERVER, attributes={})
    token = context.attach(trace.set_span_in_context(server))
    propagation.traceparent(server)
    with spans.request_span("predict") as request:
        request.set_attributes({"xnli.endpoint": "predict", "xnli.pairs": 1, "xnli.priority": "interactive"})
        span = spans.start_span("engine request", {"xnli.variant": "v", "xnli.pairs": 1})
        if span is not None:
            now = time.perf_counter()
            engine = spans.RequestTrace(span, {"xnli.variant": "v", "xnli.device": "cpu"})
            spans.record(span, "admission", now, now)
            spans.record(span, "tokenization", now, now)
            spans.record_batch([engine], now, now, {"xnli.batch.rows": 1})
            spans.record(span, "queue wait", now, now, links=engine.batches)
            exemplar(span)
            span.end()
        request.set_attribute("xnli.outcome", "success")
        exemplar(request)
    context.detach(token)
    server.end()


def micro(endpoint: str, count: int = 5_000) -> dict[str, float]:
    """Microseconds of tracing per request (``micro_request``), best of 3 runs of ``count``, per mode."""
    from app.tracing import setup

    costs: dict[str, float] = {}
    for name, ratio in (("off", None), ("sampled-0.01", "0.01"), ("sampled-1.0", "1.0")):
        if ratio is not None:
            environ = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_TRACES_SAMPLER": "traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": ratio,
            }
            setup.configure(environ)
        best = math.inf
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(count):
                micro_request()
            best = min(best, (time.perf_counter() - started) / count)
        setup.shutdown(wait_s=5.0)
        costs[name] = best * 1e6
        print(f"tracing per request, in-process: {name} {costs[name]:.2f} us", flush=True)
    return costs


def main() -> None:
    parser = argument_parser("benchmarks.tracing", __doc__, pairs=0)
    parser.add_argument("--variant", default="xlmr-mnli")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, among " + ", ".join(MODES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument("--logs", type=Path, default=Path("/tmp/benchmark-tracing"))
    parser.add_argument("--micro", type=int, default=5_000, help="requests of the in-process measurement (0: none)")
    args = parser.parse_args()
    info = machine()
    print_machine(info)
    body = orjson.dumps({**PAIR, "variant": args.variant})
    rounds: list[dict[str, Any]] = []
    with ExitStack() as stack, ProcessPoolExecutor(args.client_processes) as pool:
        endpoint, received = stack.enter_context(receiver_process())
        costs = micro(endpoint, args.micro) if args.micro else {}
        servers: dict[str, LocalServer] = {}
        for name, env in modes(endpoint).items():
            if name not in args.modes.split(","):
                continue
            env = {"XNLI_SERVE_VARIANTS": args.variant, "XNLI_SERVE_TORCH_THREADS": "1", **env}
            servers[name] = stack.enter_context(local_server(args.catalogue, args.logs / f"{name}.log", env))
        names = list(servers)

        def share(name: str, seconds: float) -> Share:
            host, port = servers[name].base_url.removeprefix("http://").rsplit(":", 1)
            return Share(host, int(port), [body], args.concurrency, seconds, 0)

        for name in names:  # warm-up, not measured
            closed_loop(pool, args.client_processes, share(name, 2.0))
        for index in range(args.rounds):
            order = names[index % len(names) :] + names[: index % len(names)]
            row: dict[str, Any] = {
                name: closed_loop(pool, args.client_processes, share(name, args.seconds)) for name in order
            }
            for name in names:
                row[name]["ratio"] = row[name]["requests_per_s"] / row[BASELINE]["requests_per_s"]
            rounds.append(row)
            print(
                f"round {index + 1}: "
                + ", ".join(
                    f"{name} {row[name]['requests_per_s']:.1f} req/s (p50 {row[name]['p50_ms']:.2f}, "
                    f"p99 {row[name]['p99_ms']:.2f} ms)"
                    for name in names
                ),
                flush=True,
            )
        time.sleep(1.0)  # the traced servers' last batch of spans leaves (OTEL_BSP_SCHEDULE_DELAY is 5 s: most)
        received_spans, exports = received()
    summary: dict[str, Any] = {}
    for name in names:
        ratios = [row[name]["ratio"] for row in rounds]
        summary[name] = {
            "req_s_median": statistics.median(row[name]["requests_per_s"] for row in rounds),
            "p50_ms_median": statistics.median(row[name]["p50_ms"] for row in rounds),
            "p99_ms_median": statistics.median(row[name]["p99_ms"] for row in rounds),
            "ratio_to_off_median": statistics.median(ratios),
            "ratio_to_off_range": [min(ratios), max(ratios)],
        }
    print(f"\n{'mode':<14} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs off (median, rounds)':>28}")
    for name, row in summary.items():
        low, high = row["ratio_to_off_range"]
        print(
            f"{name:<14} {row['req_s_median']:8.1f} {row['p50_ms_median']:8.2f} {row['p99_ms_median']:8.2f} "
            f"{row['ratio_to_off_median']:10.3f} ({low:.3f}..{high:.3f})"
        )
    print(
        f"spans received: {received_spans} in {exports} exports (the in-process measurement's and the traced servers')"
    )
    config = {key: str(value) for key, value in vars(args).items()}
    payload = {
        "machine": info,
        "micro_us": costs,
        "rounds": rounds,
        "summary": summary,
        "spans": received_spans,
        "config": config,
    }
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
