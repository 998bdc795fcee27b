"""From the protocol's gRPC messages to its transport-neutral form (``app.service.oip``) and back.

Requests: each input's elements come from its ``contents.bytes_contents`` or from ``raw_input_contents`` (what
tritonclient.grpc sends by default); the neutral parser checks everything else. Responses: outputs go back in
``raw_output_contents`` (as Triton answers, and what tritonclient reads) unless the request's ``binary_data_output``
parameter is false, which asks for typed ``contents`` instead; the protocol has it all or nothing for a response.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app import __version__
from app.engine.contract import EngineResult
from app.engine.tasks.nli import LABELS
from app.grpc.proto import open_inference_pb2 as pb
from app.service.errors import InvalidInferenceRequest
from app.service.oip.model import (
    INPUT_NAMES,
    MODEL_VERSION,
    ContentFields,
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    Parameter,
    RequestedOutput,
)
from app.service.oip.requests import prediction_query, read_options
from app.service.oip.responses import inference_response
from app.service.oip.tensors import encode_bytes, encode_fp32
from app.service.oip.zero_shot import is_zero_shot, zero_shot_query, zero_shot_response
from app.service.prediction import PredictionQuery
from app.service.variants import VariantInfo
from app.service.zero_shot import ZeroShotPlan, ZeroShotQuery

CONTENT_FIELDS = ContentFields(values="contents", raw="raw_input_contents")
RAW_OUTPUT_PARAMETER = "binary_data_output"  # false: outputs as typed contents instead of raw_output_contents
SERVER_NAME = "xnli-serve"
EXTENSIONS = ("model_repository",)


@dataclass(slots=True)  # built per request: not frozen, which would cost three times as much
class GrpcInferRequest:
    """A parsed infer request: the query for the prediction service (NLI pairs) or the zero-shot query (inputs
    ``text`` + ``candidate_labels``, as over HTTP), and what its answer must carry."""

    query: PredictionQuery | None
    id: str | None
    outputs: tuple[str, ...]
    raw_outputs: bool
    zero_shot: ZeroShotQuery | None = None


def _parameter(name: str, parameter: pb.InferParameter) -> Parameter:
    which = parameter.WhichOneof("parameter_choice")
    if which is None:
        raise InvalidInferenceRequest(f"parameter {name!r} has no value")
    value: Parameter = getattr(parameter, which)
    return value


def _parameters(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Parameter]:
    return {name: _parameter(name, value) for name, value in parameters.items()}


def read_request(message: pb.ModelInferRequest) -> InferenceRequest:
    """The message as the protocol's neutral request; checked by the neutral parser, except the pairing of
    ``raw_input_contents`` with the inputs, which only this wire has."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInferenceRequest(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs; give every input there, "
            "in the order of inputs, or none"
        )
    inputs = [
        InputTensor(
            tensor.name,
            tensor.datatype,
            list(tensor.shape),
            list(tensor.contents.bytes_contents) if tensor.HasField("contents") else None,
            raw[index] if raw else None,
        )
        for index, tensor in enumerate(message.inputs)
    ]
    outputs = [RequestedOutput(output.name, _parameters(output.parameters)) for output in message.outputs]
    return InferenceRequest(inputs, CONTENT_FIELDS, _parameters(message.parameters), outputs, message.id or None)


def infer_request(
    message: pb.ModelInferRequest,
    variant: str,
    max_pairs: int,
    routing_key: str | None,
    deadline_s: float | None,
) -> GrpcInferRequest:
    """Options first (cheap), then the output form, then the tensors; ``deadline_s`` (what is left of the call's
    deadline) shortens the request's own ``timeout`` parameter, as that shortens the server's."""
    request = read_request(message)
    options = read_options(request)
    if deadline_s is not None:
        options.timeout_s = deadline_s if options.timeout_s is None else min(options.timeout_s, deadline_s)
    raw = request.parameters.get(RAW_OUTPUT_PARAMETER, True)
    if not isinstance(raw, bool):
        raise InvalidInferenceRequest(f"parameter {RAW_OUTPUT_PARAMETER!r} must be a boolean")
    if is_zero_shot(request):  # issue #26: the same zero-shot task as HTTP's v2 infer
        asked = zero_shot_query(request, options, variant, max_pairs, routing_key)
        return GrpcInferRequest(None, request.id, options.outputs, raw, asked)
    query = prediction_query(request, options, variant, max_pairs, routing_key)
    return GrpcInferRequest(query, request.id, options.outputs, raw)


def _string_parameters(target: Mapping[str, pb.InferParameter], values: Mapping[str, Parameter]) -> None:
    for name, value in values.items():
        parameter = target[name]  # a message map creates the entry on first access
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        else:
            parameter.string_param = value


def infer_response(request: GrpcInferRequest, result: EngineResult) -> pb.ModelInferResponse:
    return write_response(request, inference_response(result, request.outputs, request.id))


def zero_shot_infer_response(
    request: GrpcInferRequest, planned: ZeroShotPlan, result: EngineResult
) -> pb.ModelInferResponse:
    return write_response(request, zero_shot_response(planned, result, request.outputs, request.id))


def write_response(request: GrpcInferRequest, response: InferenceResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version)
    if response.id is not None:
        message.id = response.id
    _string_parameters(message.parameters, response.parameters)
    for output in response.outputs:
        tensor = message.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        _string_parameters(tensor.parameters, output.parameters)
        values = output.values
        if request.raw_outputs:
            raw = encode_bytes(values) if isinstance(values, list) else encode_fp32(values)
            message.raw_output_contents.append(raw)
        elif isinstance(values, list):
            tensor.contents.bytes_contents.extend(value.encode("utf-8") for value in values)
        else:
            tensor.contents.fp32_contents.extend(values.reshape(-1).tolist())
    return message


def model_metadata(info: VariantInfo, platform: str) -> pb.ModelMetadataResponse:
    """As HTTP's model metadata says it; the message has no parameters, so ``label_order`` (the columns of
    ``probabilities``) is in every infer response's parameters and in HTTP's metadata."""
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=info.name,
        versions=[MODEL_VERSION],
        platform=platform,
        inputs=[tensor(name=name, datatype="BYTES", shape=[-1]) for name in INPUT_NAMES],
        outputs=[
            tensor(name="label", datatype="BYTES", shape=[-1]),
            tensor(name="probabilities", datatype="FP32", shape=[-1, len(LABELS)]),
        ],
    )


def server_metadata() -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=list(EXTENSIONS))
