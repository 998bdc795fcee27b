"""Every request is an outcome: answered, refused, failed or timed out. None of them is a missing value.

A request that got no answer still cost its user the wait: in every latency analysis it counts as censored at the
client's timeout (its latency is at least that long), so a variant that fails its slow requests cannot look fast.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

SUCCESS, REFUSED, FAILED, TIMED_OUT = 0, 1, 2, 3
NAMES = ("success", "refused", "failed", "timed_out")
REFUSED_STATUS = (429, 503)  # the service said no (overloaded, draining): the client may retry elsewhere
DEFAULT_TIMEOUT_S = 10.0  # the Locust client's timeout when none is given


def classify(status: int, timed_out: bool) -> int:
    """The outcome of one request from its HTTP status (0: no answer, e.g. a connection error)."""
    if timed_out:
        return TIMED_OUT
    if status == 200:
        return SUCCESS
    if status in REFUSED_STATUS:
        return REFUSED
    return FAILED


def censored(
    latency_ms: npt.NDArray[np.float64], ok: npt.NDArray[np.bool_], timeout_ms: float
) -> npt.NDArray[np.float64]:
    """Latencies where every request without an answer counts as lasting at least the client's timeout."""
    return np.where(ok, latency_ms, np.maximum(latency_ms, timeout_ms))
