"""Every Prometheus metric the service exports, defined once.

These names are a contract read by Grafana dashboards, alert rules and load-test reports: rename nothing.
Histograms (not summaries) so that quantiles can be aggregated across replicas.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.languages import XNLI_LANGUAGES

# 0.1 ms .. ~29 s in 1.5x steps (TEI uses the same ratio): fine enough for sub-millisecond HTTP overhead
# and for multi-second queues under overload.
DURATION_BUCKETS: tuple[float, ...] = tuple(round(1e-4 * 1.5**k, 7) for k in range(32))
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024)
BATCH_TOKEN_BUCKETS: tuple[float, ...] = tuple(float(2**k) for k in range(3, 18))
PADDING_RATIO_BUCKETS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)

REQUEST_DURATION = Histogram(
    "xnli_request_duration_seconds",
    "End-to-end time of a request inside the service, from routing to response.",
    ["variant", "endpoint"],
    buckets=DURATION_BUCKETS,
)
QUEUE_DURATION = Histogram(
    "xnli_queue_duration_seconds",
    "Time a request's pairs spent waiting for the device (engine time minus its batches' compute).",
    ["variant"],
    buckets=DURATION_BUCKETS,
)
TOKENIZATION_DURATION = Histogram(
    "xnli_tokenization_duration_seconds",
    "Time to tokenize one request's pairs.",
    ["variant"],
    buckets=DURATION_BUCKETS,
)
INFERENCE_DURATION = Histogram(
    "xnli_inference_duration_seconds",
    "Time of one batch on the device: collation, forward pass, softmax and copy back.",
    ["variant"],
    buckets=DURATION_BUCKETS,
)
BATCH_SIZE = Histogram("xnli_batch_size", "Pairs per batch run.", ["variant"], buckets=BATCH_SIZE_BUCKETS)
BATCH_TOKENS = Histogram(
    "xnli_batch_tokens",
    "Padded tokens per batch run (pairs x padded length).",
    ["variant"],
    buckets=BATCH_TOKEN_BUCKETS,
)
BATCH_PADDING_RATIO = Histogram(
    "xnli_batch_padding_ratio",
    "Share of a batch's padded tokens that are padding.",
    ["variant"],
    buckets=PADDING_RATIO_BUCKETS,
)
COMPUTED_TOKENS = Counter(
    "xnli_computed_tokens",
    "Tokens the device computed, by kind: real (from pairs) or padding; padding share = padding / (real + padding).",
    ["variant", "kind"],
)


class Outcome(StrEnum):
    """The `outcome` label of xnli_requests_total."""

    SUCCESS = "success"
    CLIENT_ERROR = "client_error"
    NOT_FOUND = "not_found"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    DISCONNECTED = "disconnected"  # the client left first
    ERROR = "error"


REQUESTS = Counter(
    "xnli_requests",
    f"Requests answered, by outcome ({', '.join(Outcome)}).",
    ["variant", "outcome"],
)
PREDICTIONS = Counter(
    "xnli_predictions",
    "Pairs predicted for clients, by top label and the request's `language` (see LANGUAGE_LABELS).",
    ["variant", "label", "language"],
)
QUEUE_DEPTH = Gauge("xnli_queue_depth", "Pairs waiting in the variant's queue.", ["variant"])
VARIANT_INFO = Gauge(
    "xnli_variant_info",
    "Catalogue metadata of each loaded variant (value 1).",
    ["variant", "base_model", "intermediate_task", "device", "dtype", "backend", "quantization"],
)
REQUEST_FAILURES = Counter(
    "xnli_request_failures",
    "Requests the engine could not answer with predictions, by reason (overloaded, deadline, disconnected, "
    "inference, draining, too_long, not_ready).",
    ["variant", "reason"],
)
DROPPED_PAIRS = Counter(
    "xnli_dropped_pairs",
    "Queued pairs dropped before compute because their request expired, disconnected or failed.",
    ["variant", "reason"],
)
BATCH_SPLITS = Counter("xnli_batch_splits", "Batches split in halves after running out of device memory.", ["variant"])
GRAPH_EAGER_BATCHES = Counter(
    "xnli_graph_eager_batches",
    "Batches of a graph variant (compile, cuda-graphs) run eagerly: no_bucket (fits no bucket) or preemptible "
    "(a background batch that pauses for interactive ones).",
    ["variant", "reason"],
)
HTTP_CONNECTIONS_CLOSED = Counter(
    "xnli_http_connections_closed",
    "Connections the HTTP edge closed before a request was served: header_timeout (408), headers_too_large (431), "
    "body_timeout (stalled or crawling body), evicted (idle, closed for a new connection at the cap), over_capacity "
    "(503 at the cap, every connection busy), write_timeout (answers left unread), pipeline_limit (more pipelined "
    "requests than a connection may park; closed once those parked were answered).",
    ["reason"],
)
INFLIGHT_REQUESTS = Gauge("xnli_inflight_requests", "Requests inside the engine (tokenizing, queued or computing).")
UNKNOWN_VARIANT = "_unknown"

# Live traffic between variants. Requests naming no variant are split by the catalogue's [traffic] weights; shadows
# run a sampled share of a primary's pairs on a candidate. A candidate's client series above (request, queue,
# inference, batch, predictions) never include its shadow work, which has the xnli_shadow_* series below.
ROUTED_REQUESTS = Counter(
    "xnli_routed_requests",
    "Requests by how their variant was chosen: explicit (named by the client), split (weighted draw), sticky "
    "(X-Routing-Key hashed onto the split) or default (no split configured).",
    ["variant", "route"],
)
PRIORITY_REQUESTS = Counter(
    "xnli_priority_requests",
    "Requests the engine took, by priority class (interactive or batch).",
    ["variant", "priority"],
)
SHADOW_SAMPLED_PAIRS = Counter(
    "xnli_shadow_sampled_pairs",
    "Pairs of a primary chosen to be shadowed on a candidate; each is later compared or dropped.",
    ["primary", "candidate"],
)
SHADOW_PAIRS = Counter(
    "xnli_shadow_pairs",
    "Shadowed pairs compared, by the primary's and the candidate's top label (the flip matrix) and language.",
    ["primary", "candidate", "primary_label", "candidate_label", "language"],
)
PROBABILITY_DIFF_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
SHADOW_PROBABILITY_DIFF = Histogram(
    "xnli_shadow_probability_diff",
    "Per shadowed pair, the largest absolute difference between the primary's and the candidate's probabilities.",
    ["primary", "candidate"],
    buckets=PROBABILITY_DIFF_BUCKETS,
)
SHADOW_DROP_REASONS = (
    "busy",  # client work was queued on the device beyond shadow_busy_backlog_ms
    "queue_full",  # the candidate's shadow lane held shadow_max_queue_pairs
    "expired",  # waited shadow_timeout_s without reaching the device
    "draining",  # the service is shutting down
    "not_ready",  # the candidate is not serving
    "unavailable",  # its device worker is stopping or down
    "too_long",  # a pair does not fit the candidate's max_seq_len (and the request asked for no truncation)
    "failed",  # the candidate's forward pass failed
    "error",  # anything else (logged)
)
SHADOW_DROPPED_PAIRS = Counter(
    "xnli_shadow_dropped_pairs",
    f"Sampled pairs never compared, by reason: {', '.join(SHADOW_DROP_REASONS)}.",
    ["primary", "candidate", "reason"],
)
SHADOW_QUEUE_DEPTH = Gauge("xnli_shadow_queue_depth", "Shadow pairs waiting in the variant's shadow lane.", ["variant"])
SHADOW_INFERENCE_DURATION = Histogram(
    "xnli_shadow_inference_duration_seconds",
    "Time of one shadow batch on the device (the candidate's shadow work; not in xnli_inference_duration_seconds).",
    ["variant"],
    buckets=DURATION_BUCKETS,
)
SHADOW_BATCH_SIZE = Histogram(
    "xnli_shadow_batch_size", "Pairs per shadow batch run.", ["variant"], buckets=BATCH_SIZE_BUCKETS
)

# The `language` label: the 15 XNLI languages (ISO 639-1), `other` for any other code, `unspecified` when absent.
LANGUAGE_LABELS: frozenset[str] = frozenset(XNLI_LANGUAGES)
OTHER_LANGUAGE = "other"
UNSPECIFIED_LANGUAGE = "unspecified"


def language_label(code: str | None) -> str:
    """A request's `language` as a metric label from a fixed set: ``fr``, ``fr-CA`` and ``FR`` count as ``fr``."""
    if code is None:
        return UNSPECIFIED_LANGUAGE
    primary = code.strip().replace("_", "-").split("-", 1)[0].lower()
    return primary if primary in LANGUAGE_LABELS else OTHER_LANGUAGE


class CudaMemoryCollector(Collector):
    """Reads allocator state at scrape time, so nothing polls the GPU between scrapes."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        import torch

        if not torch.cuda.is_available():
            return
        family = GaugeMetricFamily(
            "xnli_cuda_memory_allocated_bytes", "Bytes held by torch's CUDA allocator.", labels=["device"]
        )
        for index in range(torch.cuda.device_count()):
            family.add_metric([f"cuda:{index}"], float(torch.cuda.memory_allocated(index)))
        yield family


_cuda_collector_registered = False


def register_cuda_collector() -> None:
    global _cuda_collector_registered
    if not _cuda_collector_registered:
        REGISTRY.register(CudaMemoryCollector())
        _cuda_collector_registered = True
