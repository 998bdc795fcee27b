"""From the prediction service's results and the typed variant description to the protocol's answers: infer
responses (JSON tensors, or binary ones with the binary tensor extension) and model metadata."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from app.api import binary_tensors
from app.api.inference import RenderedBody
from app.api.oip.parsing import InferRequest
from app.api.oip.schemas import INPUT_NAMES, LABEL_ORDER, MODEL_VERSION, ModelMetadata, TensorMetadata
from app.engine.backends import get_backend
from app.engine.contract import EngineResult
from app.engine.models.labels import LABELS
from app.service.variants import VariantInfo


def infer_response(request: InferRequest, result: EngineResult) -> bytes | RenderedBody:
    probabilities = result.probabilities
    count = len(probabilities)
    tensors: list[dict[str, Any]] = []
    buffers: list[bytes] = []
    for name in request.outputs:
        if name == "label":
            labels = [LABELS[index] for index in np.argmax(probabilities, axis=1).tolist()]
            tensor: dict[str, Any] = {"name": "label", "datatype": "BYTES", "shape": [count]}
            if name in request.binary_outputs:
                buffers.append(binary_tensors.encode_bytes(labels))
                tensor["parameters"] = {"binary_data_size": len(buffers[-1])}
            else:
                tensor["data"] = labels
        else:
            tensor = {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [count, len(LABELS)],
                "parameters": {"label_order": LABEL_ORDER},
            }
            if name in request.binary_outputs:
                buffers.append(binary_tensors.encode_fp32(probabilities))
                tensor["parameters"]["binary_data_size"] = len(buffers[-1])
            else:
                tensor["data"] = probabilities.reshape(-1).tolist()
        tensors.append(tensor)
    truncated = ",".join(str(index) for index, flag in enumerate(result.truncated) if flag)
    response: dict[str, Any] = {
        "model_name": result.variant,
        "model_version": MODEL_VERSION,
        "parameters": {"label_order": LABEL_ORDER, "truncated_pairs": truncated},
        "outputs": tensors,
    }
    if request.id is not None:
        response["id"] = request.id
    if not buffers:
        return orjson.dumps(response)
    content, headers = binary_tensors.encode_response(response, buffers)
    return RenderedBody(content, binary_tensors.MEDIA_TYPE, headers)


def model_metadata(info: VariantInfo) -> ModelMetadata:
    return ModelMetadata(
        name=info.name,
        versions=[MODEL_VERSION],
        platform=get_backend(info.backend).platform,
        inputs=[TensorMetadata(name=name, datatype="BYTES", shape=[-1]) for name in INPUT_NAMES],
        outputs=[
            TensorMetadata(name="label", datatype="BYTES", shape=[-1]),
            TensorMetadata(
                name="probabilities", datatype="FP32", shape=[-1, len(LABELS)], parameters={"label_order": LABEL_ORDER}
            ),
        ],
        parameters={
            "label_order": LABEL_ORDER,
            "base_model": info.base_model,
            "intermediate_task": info.intermediate_task,
            "device": info.device,
            "dtype": info.dtype,
            "untrained_demo": info.untrained,
        },
    )
