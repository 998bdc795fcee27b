"""From the prediction service's result to the protocol's inference response: the outputs asked for, in the order
asked, as typed tensors that each transport writes as values or raw bytes."""

from __future__ import annotations

import numpy as np

from app.engine.engine import PredictionResult
from app.engine.models.labels import LABELS
from app.service.oip.model import LABEL_ORDER, MODEL_VERSION, InferenceResponse, OutputTensor, Parameter
from app.service.oip.requests import Inference


def inference_response(inference: Inference, result: PredictionResult) -> InferenceResponse:
    probabilities = result.probabilities
    count = len(probabilities)
    outputs: list[OutputTensor] = []
    for name in inference.outputs:
        if name == "label":
            labels = [LABELS[index] for index in np.argmax(probabilities, axis=1).tolist()]
            outputs.append(OutputTensor("label", "BYTES", [count], {}, labels))
        else:
            parameters: dict[str, Parameter] = {"label_order": LABEL_ORDER}
            outputs.append(OutputTensor("probabilities", "FP32", [count, len(LABELS)], parameters, probabilities))
    truncated = ",".join(str(index) for index, flag in enumerate(result.truncated) if flag)
    return InferenceResponse(
        model_name=result.variant,
        model_version=MODEL_VERSION,
        parameters={"label_order": LABEL_ORDER, "truncated_pairs": truncated},
        outputs=outputs,
        id=inference.id,
    )
