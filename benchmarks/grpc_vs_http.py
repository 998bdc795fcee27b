"""The Open Inference Protocol over gRPC vs HTTP/JSON vs HTTP with binary tensors, through one server (issue #26).

    python -m benchmarks.grpc_vs_http --catalogue /tmp/store/variants.toml --variant xlmr-mnli

One real `xnli-serve serve` on loopback. For each request size (--sizes, pairs per request) and each round
(--rounds), every protocol in turn (the order rotated each round, so that drift on a shared machine spreads over all
three) runs a closed loop of --concurrency callers for --seconds against the same model:

* grpc: ModelInfer over one HTTP/2 channel (grpc.aio), inputs in raw_input_contents, outputs in
  raw_output_contents: what tritonclient.grpc sends and asks for on its defaults;
* http-json: POST /v2/models/{variant}/infer with JSON tensors, JSON answers;
* http-binary: the same with the binary tensor extension both ways (tritonclient.http's default for inputs).

Request bodies and messages are built once up front, and the HTTP client is a minimal HTTP/1.1 keep-alive client on
asyncio streams (httpx would cost more per request than the server), so that the figures are the server's and the
wire's. Prints req/s and latency p50/p99 per protocol and size, and the ratios to gRPC; writes JSON (--out).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import orjson

from app.api.binary_tensors import HEADER_LENGTH
from app.grpc.proto import open_inference_pb2 as pb
from app.local_server import local_server
from app.service.oip.tensors import encode_bytes
from benchmarks.common import argument_parser, machine, mixed_pairs, percentiles, print_machine, write_json

PROTOCOLS = ("grpc", "http-json", "http-binary")
Pairs = list[tuple[str, str]]
Call = Callable[[int], Awaitable[bool]]  # one request (by index into the prepared ones): whether it succeeded


def grpc_messages(variant: str, batches: list[Pairs]) -> list[bytes]:
    messages = []
    for pairs in batches:
        message = pb.ModelInferRequest(model_name=variant)
        for position, name in enumerate(("premise", "hypothesis")):
            message.inputs.add(name=name, datatype="BYTES", shape=[len(pairs)])
            message.raw_input_contents.append(encode_bytes([pair[position] for pair in pairs]))
        messages.append(message.SerializeToString())
    return messages


def http_requests(host: str, port: int, variant: str, batches: list[Pairs], binary: bool) -> list[bytes]:
    requests = []
    for pairs in batches:
        headers = {"Content-Type": "application/json"}
        inputs: list[dict[str, Any]] = []
        tail = b""
        for position, name in enumerate(("premise", "hypothesis")):
            values = [pair[position] for pair in pairs]
            tensor: dict[str, Any] = {"name": name, "datatype": "BYTES", "shape": [len(pairs)]}
            if binary:
                raw = encode_bytes(values)
                tensor["parameters"] = {"binary_data_size": len(raw)}
                tail += raw
            else:
                tensor["data"] = values
            inputs.append(tensor)
        body: dict[str, Any] = {"inputs": inputs}
        if binary:
            body["parameters"] = {"binary_data_output": True}
        head_json = orjson.dumps(body)
        if binary:
            headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head_json))}
        content = head_json + tail
        lines = [f"POST /v2/models/{variant}/infer HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(content)}"]
        lines += [f"{key}: {value}" for key, value in headers.items()]
        requests.append(("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + content)
    return requests


class HttpConnection:
    """One keep-alive HTTP/1.1 connection: write a prepared request, read its whole answer."""

    def __init__(self, host: str, port: int, requests: list[bytes]) -> None:
        self.host, self.port, self.requests = host, port, requests
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def __call__(self, index: int) -> bool:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        writer.write(self.requests[index % len(self.requests)])
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        if b"connection: close" in head.lower():
            writer.close()
            self.streams = None
        return head[9:12] == b"200"

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()


async def closed_loop(calls: list[Call], seconds: float) -> dict[str, Any]:
    """Each of ``calls`` (one per caller) back to back for ``seconds``; latencies of the answered ones."""
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def caller(number: int, call: Call) -> None:
        nonlocal errors
        index = number * 101
        while time.perf_counter() < stop:
            began = time.perf_counter()
            try:
                ok = await call(index)
            except (OSError, asyncio.IncompleteReadError, grpc.aio.AioRpcError):
                ok = False
            index += 1
            if ok:
                latencies.append(time.perf_counter() - began)
            else:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller(number, call) for number, call in enumerate(calls)))
    return {"latencies": latencies, "errors": errors, "elapsed": time.perf_counter() - started}


async def run(args: Any, host: str, http_port: int, grpc_target: str, pairs: Pairs) -> list[dict[str, Any]]:
    rows = []
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        infer: Any = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for size in [int(value) for value in args.sizes.split(",")]:
            batches = [pairs[start : start + size] for start in range(0, len(pairs) - size + 1, size)]
            messages = grpc_messages(args.variant, batches)

            async def grpc_call(index: int, messages: list[bytes] = messages) -> bool:
                answer = await infer(messages[index % len(messages)], timeout=30)
                return bool(answer)

            bodies = {binary: http_requests(host, http_port, args.variant, batches, binary) for binary in (False, True)}
            connections = {
                "http-json": [HttpConnection(host, http_port, bodies[False]) for _ in range(args.concurrency)],
                "http-binary": [HttpConnection(host, http_port, bodies[True]) for _ in range(args.concurrency)],
            }
            calls: dict[str, list[Call]] = {
                "grpc": [grpc_call] * args.concurrency,
                "http-json": list(connections["http-json"]),
                "http-binary": list(connections["http-binary"]),
            }
            for protocol in PROTOCOLS:  # warm-up: connections open, caches hot
                await closed_loop(calls[protocol], args.warmup_seconds)
            totals: dict[str, dict[str, Any]] = {
                protocol: {"latencies": [], "errors": 0, "elapsed": 0.0} for protocol in PROTOCOLS
            }
            for round_number in range(args.rounds):
                shift = round_number % len(PROTOCOLS)
                for protocol in PROTOCOLS[shift:] + PROTOCOLS[:shift]:
                    part = await closed_loop(calls[protocol], args.seconds)
                    totals[protocol]["latencies"] += part["latencies"]
                    totals[protocol]["errors"] += part["errors"]
                    totals[protocol]["elapsed"] += part["elapsed"]
            for group in connections.values():
                for connection in group:
                    connection.close()
            for protocol in PROTOCOLS:
                total = totals[protocol]
                latencies: list[float] = total["latencies"]
                rows.append(
                    {
                        "protocol": protocol,
                        "pairs_per_request": size,
                        "concurrency": args.concurrency,
                        "requests": len(latencies),
                        "errors": total["errors"],
                        "requests_per_s": len(latencies) / float(total["elapsed"]),
                        **percentiles(latencies),
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser("benchmarks.grpc_vs_http", __doc__, pairs=512)
    parser.add_argument("--variant", default="xlmr-mnli")
    parser.add_argument("--sizes", default="1,16", help="Pairs per request, e.g. 1,16")
    parser.add_argument("--concurrency", type=int, default=4, help="Callers at once, per protocol")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (the protocol order rotates)")
    parser.add_argument("--seconds", type=float, default=4.0, help="Per protocol, size and round")
    parser.add_argument("--warmup-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)

    info = machine()
    print_machine(info)
    pairs = mixed_pairs(args.data, args.pairs)
    env = {"XNLI_SERVE_VARIANTS": args.variant, "XNLI_SERVE_LOG_LEVEL": "warning"}
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "xnli-bench-grpc-vs-http.log"
    with local_server(args.catalogue, log, env) as running:
        assert running.grpc_target is not None, "XNLI_SERVE_GRPC_ENABLED is false"
        host, port = running.base_url.removeprefix("http://").rsplit(":", 1)
        try:
            import uvloop

            rows = uvloop.run(run(args, host, int(port), running.grpc_target, pairs))
        except ImportError:
            rows = asyncio.run(run(args, host, int(port), running.grpc_target, pairs))
    print(f"{'protocol':>12} {'pairs':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'vs grpc':>8}")
    for row in rows:
        reference = next(
            other["requests_per_s"]
            for other in rows
            if other["protocol"] == "grpc" and other["pairs_per_request"] == row["pairs_per_request"]
        )
        row["ratio_to_grpc"] = row["requests_per_s"] / reference if reference else 0.0
        print(
            f"{row['protocol']:>12} {row['pairs_per_request']:>5} {row['requests_per_s']:>8.0f} "
            f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['errors']:>6} {row['ratio_to_grpc']:>8.2f}",
            flush=True,
        )
    write_json(args.out, {"machine": info, "variant": args.variant, "rows": rows})


if __name__ == "__main__":
    main()
