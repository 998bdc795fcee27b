"""From the protocol's typed answers to HTTP: infer responses as JSON tensors, or binary ones with the binary tensor
extension, and model metadata."""

from __future__ import annotations

from typing import Any

import orjson

from app.api import binary_tensors
from app.api.inference import RenderedBody
from app.api.oip.parsing import InferRequest
from app.api.oip.schemas import INPUT_NAMES, LABEL_ORDER, MODEL_VERSION, ModelMetadata, TensorMetadata
from app.engine.backends import get_backend
from app.engine.contract import EngineResult
from app.engine.tasks.nli import LABELS
from app.service.oip.model import InferenceResponse
from app.service.oip.responses import inference_response
from app.service.oip.tensors import encode_bytes, encode_fp32
from app.service.oip.zero_shot import METADATA as ZERO_SHOT_METADATA
from app.service.oip.zero_shot import zero_shot_response
from app.service.variants import VariantInfo
from app.service.zero_shot import ZeroShotPlan


def infer_response(request: InferRequest, result: EngineResult) -> bytes | RenderedBody:
    return _write(request, inference_response(result, request.outputs, request.id))


def zero_shot_infer_response(
    request: InferRequest, planned: ZeroShotPlan, result: EngineResult
) -> bytes | RenderedBody:
    """issue #26: a zero-shot answer (labels, scores), written as every infer response is."""
    return _write(request, zero_shot_response(planned, result, request.outputs, request.id))


def _write(request: InferRequest, response: InferenceResponse) -> bytes | RenderedBody:
    tensors: list[dict[str, Any]] = []
    buffers: list[bytes] = []
    for output in response.outputs:
        tensor: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": output.shape}
        values = output.values
        if output.name in request.binary_outputs:
            buffers.append(encode_bytes(values) if isinstance(values, list) else encode_fp32(values))
            output.parameters["binary_data_size"] = len(buffers[-1])  # this response's own dict, written once
            tensor["parameters"] = output.parameters
        else:
            if output.parameters:
                tensor["parameters"] = output.parameters
            tensor["data"] = values if isinstance(values, list) else values.reshape(-1).tolist()
        tensors.append(tensor)
    body: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "parameters": response.parameters,
        "outputs": tensors,
    }
    if response.id is not None:
        body["id"] = response.id
    if not buffers:
        return orjson.dumps(body)
    content, headers = binary_tensors.encode_response(body, buffers)
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
            **ZERO_SHOT_METADATA,  # issue #26: the zero-shot task the same model serves
        },
    )
