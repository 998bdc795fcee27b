"""From the prediction service's result to the protocol's inference response: the outputs asked for, in the order
asked, as typed tensors that each transport writes as values or raw bytes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.engine.contract import EngineResult
from app.engine.tasks.nli import LABELS
from app.service.oip.model import LABEL_ORDER, MODEL_VERSION, InferenceResponse, OutputTensor, Parameter


def inference_response(result: EngineResult, outputs: Sequence[str], request_id: str | None) -> InferenceResponse:
    """``outputs`` as :func:`~app.service.oip.requests.read_options` checked them; ``request_id`` is echoed."""
    probabilities = result.probabilities
    count = len(probabilities)
    tensors: list[OutputTensor] = []
    for name in outputs:
        if name == "label":
            labels = [LABELS[index] for index in np.argmax(probabilities, axis=1).tolist()]
            tensors.append(OutputTensor("label", "BYTES", [count], {}, labels))
        else:
            shape = [count, len(LABELS)]
            tensors.append(OutputTensor("probabilities", "FP32", shape, {"label_order": LABEL_ORDER}, probabilities))
    truncated = ",".join(str(index) for index, flag in enumerate(result.truncated) if flag)
    parameters: dict[str, Parameter] = {"label_order": LABEL_ORDER, "truncated_pairs": truncated}
    return InferenceResponse(result.variant, MODEL_VERSION, parameters, tensors, request_id)
