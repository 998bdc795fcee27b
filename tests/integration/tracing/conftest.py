from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.tracing.receiver import OtlpReceiver, running_receiver
from tests.support.helpers import write_catalogue

# Spans leave the batch span processor every 50 ms instead of 5 s: the tests wait for them.
EXPORT_FAST = {"OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_SERVICE_NAME": "xnli-test"}
NARROW_PAIRS = 4  # the pairs `narrow` queues, and the most a request may send


def traced_env(receiver: OtlpReceiver, **extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "XNLI_SERVE_MAX_PAIRS_PER_REQUEST": str(NARROW_PAIRS),
        **EXPORT_FAST,
        **extra,
    }


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with running_receiver() as running:
        yield running


SHADOWS = """
[[traffic.shadow]]
primary = "shadowed"
candidate = "candidate"
fraction = 1.0
"""


def traced_catalogue(folder: Path, store: Path) -> Path:
    """``solo``: batches wait 400 ms to fill, so concurrent requests share one; ``shadowed``, its pairs run again
    on ``candidate``; ``narrow``: a full request's pairs wait 600 ms there, and fill its queue, so a second request
    meanwhile gets a 429."""
    catalogue = write_catalogue(
        folder / "variants.toml",
        store,
        [
            {"name": "solo", "checkpoint": "xlmr-mnli", "max_wait_ms": 400.0},
            {"name": "shadowed", "checkpoint": "xlmr-mnli"},
            {"name": "candidate", "checkpoint": "xlmr-squad-mnli"},
            {"name": "narrow", "checkpoint": "xlmr-mnli", "max_queue_pairs": NARROW_PAIRS, "max_wait_ms": 600.0},
        ],
        max_batch_size=8,
        max_seq_len=64,
    )
    catalogue.write_text(catalogue.read_text(encoding="utf-8") + SHADOWS, encoding="utf-8")
    return catalogue
