"""From an infer request's HTTP body to the protocol's typed request (``app.service.oip``): JSON, or JSON followed by
binary tensors (the binary tensor extension), and which outputs go back as binary data. What the body says is checked
by the transport-neutral parser; every problem is an :class:`InvalidInferenceRequest` (or a
:class:`TooManyPairsError`), which the route answers through ``app.api.errors`` like any other failure."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from app.api import binary_tensors
from app.api.errors import first_problem
from app.api.oip.schemas import InferenceRequestBody
from app.service.errors import InvalidInferenceRequest
from app.service.oip.model import ContentFields, InferenceRequest, InputTensor, RequestedOutput
from app.service.oip.requests import MAX_TIMEOUT_US, prediction_query, read_options
from app.service.oip.zero_shot import is_zero_shot, zero_shot_query
from app.service.prediction import PredictionQuery
from app.service.zero_shot import ZeroShotQuery

__all__ = ["MAX_TIMEOUT_US", "InferRequest", "infer_request", "read_body"]

CONTENT_FIELDS = ContentFields(values="data", raw="a binary_data_size parameter")


@dataclass(slots=True)  # built per request: not frozen, which would cost three times as much
class InferRequest:
    """A parsed infer request: the query for the prediction service and what its answer must carry."""

    query: PredictionQuery | None  # None for a zero-shot request: its pairs are built once it is routed
    id: str | None
    outputs: tuple[str, ...]
    binary_outputs: frozenset[str]
    zero_shot: ZeroShotQuery | None = None  # issue #26: inputs text + candidate_labels (app.service.oip.zero_shot)


def read_body(raw: bytes, header_length: str | None) -> InferenceRequest:
    """The JSON header and, per input, its slice of the binary data; the body limit (XNLI_SERVE_MAX_BODY_BYTES) has
    already bounded everything read here."""
    try:
        head, tail = binary_tensors.split_body(raw, header_length)
        body = InferenceRequestBody.model_validate_json(head)
    except ValidationError as error:
        raise InvalidInferenceRequest(f"invalid inference request: {first_problem(error)}") from None
    sizes = [(tensor.name, binary_tensors.binary_data_size(tensor.parameters, tensor.name)) for tensor in body.inputs]
    segments = binary_tensors.slice_inputs(sizes, tail)
    inputs: list[InputTensor] = []
    for tensor, segment in zip(body.inputs, segments, strict=True):
        if segment is not None and tensor.data is not None:
            raise InvalidInferenceRequest(
                f"input {tensor.name!r} has both {CONTENT_FIELDS.values} and {CONTENT_FIELDS.raw}"
            )
        inputs.append(InputTensor(tensor.name, tensor.datatype, tensor.shape, tensor.data, segment))
    outputs = [RequestedOutput(output.name, output.parameters or {}) for output in body.outputs or ()]
    return InferenceRequest(inputs, CONTENT_FIELDS, body.parameters or {}, outputs, body.id)


def infer_request(
    request: InferenceRequest, variant: str, max_pairs: int, routing_key: str | None = None
) -> InferRequest:
    """Options first (cheap), then which outputs are binary, then the tensors."""
    options = read_options(request)
    binary = _binary_outputs(request, options.outputs)
    if is_zero_shot(request):  # issue #26
        asked = zero_shot_query(request, options, variant, max_pairs, routing_key)
        return InferRequest(None, request.id, options.outputs, binary, asked)
    query = prediction_query(request, options, variant, max_pairs, routing_key)
    return InferRequest(query, request.id, options.outputs, binary)


def _binary_outputs(request: InferenceRequest, outputs: tuple[str, ...]) -> frozenset[str]:
    """The outputs to send as binary data: ``binary_data`` of the output, else the request's ``binary_data_output``."""
    default = request.parameters.get("binary_data_output", False)
    if not isinstance(default, bool):
        raise InvalidInferenceRequest("parameter 'binary_data_output' must be a boolean")
    asked = {output.name: output.parameters for output in request.outputs}
    binary = set()
    for name in outputs:
        value = asked.get(name, {}).get("binary_data", default)
        if not isinstance(value, bool):
            raise InvalidInferenceRequest(f"output {name!r}: parameter 'binary_data' must be a boolean")
        if value:
            binary.add(name)
    return frozenset(binary)
