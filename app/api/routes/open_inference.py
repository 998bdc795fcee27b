"""Open Inference Protocol (KServe v2, as spoken by Triton and MLServer) over the same engine as /predict.

Each catalogue variant is a model with one version, "1". Inputs are two BYTES tensors, ``premise`` and
``hypothesis``, of equal length; outputs are ``label`` (BYTES, [n]) and ``probabilities`` (FP32, [n, 3], columns in
the order given by the ``label_order`` parameter). Tensors travel as JSON or, with the binary tensor extension
(tritonclient's default), as raw bytes after the JSON header; both go through the same checks. Errors are
``{"error": "<message>"}`` as the protocol specifies. The model repository extension is in ``repository``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from app import __version__
from app.api import binary_tensors
from app.api.binary_tensors import BinaryTensorError
from app.api.errors import ApiError, first_problem, from_engine
from app.api.inference import RenderedBody, run_prediction, too_many_pairs
from app.engine.engine import Engine, PredictionResult, VariantRuntime
from app.engine.errors import UnknownVariantError
from app.engine.labels import LABELS

router = APIRouter(prefix="/v2", tags=["open inference protocol"])

MODEL_VERSION = "1"
INPUT_NAMES = ("premise", "hypothesis")
OUTPUT_NAMES = ("label", "probabilities")
LABEL_ORDER = ",".join(LABELS)
Parameters = dict[str, bool | int | float | str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: Parameters | None = None


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: Parameters | None = None


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Readiness(BaseModel):
    name: str | None = None
    ready: bool


class Liveness(BaseModel):
    live: bool


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None  # absent when the tensor is sent as binary data (binary_data_size)


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: Parameters | None = None


class InferenceRequestBody(BaseModel):
    """`parameters` may carry `truncate` (bool), `timeout` (microseconds, as in Triton), `priority` ("interactive" or
    "batch", as on /predict) and `language` (ISO 639-1 code, as on /predict)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=len(INPUT_NAMES))
    outputs: list[RequestOutput] | None = Field(None, max_length=len(OUTPUT_NAMES))


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any]


class InferenceResponseBody(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class OipError(BaseModel):
    error: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OipError, "description": description}
    for status, description in (
        (
            400,
            "Malformed request: wrong datatype, mismatched shapes, missing or unknown tensors, binary data whose "
            "sizes do not add up.",
        ),
        (404, "Unknown model or version."),
        (413, "Too many pairs, or body too large."),
        (429, "Overloaded; see Retry-After."),
        (500, "The forward pass of this request's batch failed."),
        (503, "Not ready, shutting down, or the deadline passed."),
    )
}


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "invalid_inference_request", message)


def _model(request: Request, name: str, version: str | None) -> VariantRuntime:
    engine: Engine = request.app.state.engine
    try:
        runtime = engine.resolve(name)
    except UnknownVariantError as error:
        raise from_engine(error) from None
    if version is not None and version != MODEL_VERSION:
        raise ApiError(404, "unknown_version", f"model {name!r} has no version {version!r}; versions: {MODEL_VERSION}")
    return runtime


def _flatten(data: list[Any], limit: int) -> list[Any] | None:
    """Row-major flattening (the protocol allows nested lists that mirror the shape); None past ``limit`` elements,
    so an oversized or lying tensor costs no more than ``limit`` steps."""
    flat: list[Any] = []
    pending = [iter(data)]
    while pending:
        item = next(pending[-1], _END)
        if item is _END:
            pending.pop()
        elif isinstance(item, list):
            if len(pending) >= 2:  # [n] and [n, 1] nest at most one list deep
                return None
            pending.append(iter(item))
        elif len(flat) == limit:
            return None
        else:
            flat.append(item)
    return flat


_END = object()


def _strings(tensor: RequestInput, max_pairs: int, binary: memoryview | None = None) -> list[str]:
    """The tensor's strings, from its JSON data or its ``binary`` segment; shapes and element counts are checked
    before any per-element work."""
    if tensor.datatype != "BYTES":
        raise _bad_request(f"input {tensor.name!r} has datatype {tensor.datatype}; expected BYTES")
    shape = tensor.shape
    if not shape or len(shape) > 2 or (len(shape) == 2 and shape[1] != 1) or any(dim < 0 for dim in shape):
        raise _bad_request(f"input {tensor.name!r} has shape {shape}; expected [n] or [n, 1]")
    count = shape[0]
    if count > max_pairs:
        raise too_many_pairs(count, max_pairs)
    if binary is not None:
        try:
            values: list[Any] | None = binary_tensors.decode_bytes(binary, count, tensor.name)
        except BinaryTensorError as error:
            raise _bad_request(str(error)) from None
    elif tensor.data is None:
        raise _bad_request(f"input {tensor.name!r} has neither data nor a binary_data_size parameter")
    elif len(tensor.data) != count:
        raise _bad_request(f"input {tensor.name!r} has shape {shape} but {len(tensor.data)} rows")
    else:
        values = _flatten(tensor.data, count)
    if values is None or len(values) != count:
        raise _bad_request(f"input {tensor.name!r} has shape {shape} but its data does not match it")
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise _bad_request(f"input {tensor.name!r} element {index} is {type(value).__name__}; expected a string")
        if not value.strip():
            raise _bad_request(f"input {tensor.name!r} element {index} is empty")
    return values


def _pairs(body: InferenceRequestBody, max_pairs: int, segments: list[memoryview | None]) -> list[tuple[str, str]]:
    tensors: dict[str, RequestInput] = {}
    binary: dict[str, memoryview | None] = {}
    for tensor, segment in zip(body.inputs, segments, strict=True):
        if tensor.name not in INPUT_NAMES:
            raise _bad_request(f"unexpected input {tensor.name!r}; inputs are {', '.join(INPUT_NAMES)}")
        if tensor.name in tensors:
            raise _bad_request(f"input {tensor.name!r} given twice")
        tensors[tensor.name] = tensor
        binary[tensor.name] = segment
    missing = [name for name in INPUT_NAMES if name not in tensors]
    if missing:
        raise _bad_request(f"missing input {missing[0]!r}; inputs are {', '.join(INPUT_NAMES)}")
    premise, hypothesis = tensors["premise"], tensors["hypothesis"]
    if premise.shape[:1] != hypothesis.shape[:1]:
        raise _bad_request(f"premise has shape {premise.shape} but hypothesis has shape {hypothesis.shape}")
    premises = _strings(premise, max_pairs, binary["premise"])
    hypotheses = _strings(hypothesis, max_pairs, binary["hypothesis"])
    if not premises:
        raise _bad_request("inputs are empty")
    return list(zip(premises, hypotheses, strict=True))


def _requested_outputs(body: InferenceRequestBody) -> tuple[str, ...]:
    """Each output at most once: a response never grows with how often a client names an output."""
    if not body.outputs:
        return OUTPUT_NAMES
    names = tuple(output.name for output in body.outputs)
    unknown = [name for name in names if name not in OUTPUT_NAMES]
    if unknown:
        raise _bad_request(f"unknown output {unknown[0]!r}; outputs are {', '.join(OUTPUT_NAMES)}")
    if len(set(names)) != len(names):
        raise _bad_request(f"output named more than once in {list(names)}")
    return names


MAX_TIMEOUT_US = 3_600_000_000  # one hour, as /predict's timeout_ms allows


def _options(body: InferenceRequestBody) -> tuple[bool, float | None]:
    parameters = body.parameters or {}
    truncate = parameters.get("truncate", True)
    if not isinstance(truncate, bool):
        raise _bad_request("parameter 'truncate' must be a boolean")
    timeout_us = parameters.get("timeout")
    if timeout_us is None:
        return truncate, None
    if (
        isinstance(timeout_us, bool | str)
        or not 0 < timeout_us <= MAX_TIMEOUT_US  # NaN fails this too; a huge int never reaches float()
    ):
        raise _bad_request(f"parameter 'timeout' must be a number of microseconds in (0, {MAX_TIMEOUT_US}]")
    return truncate, timeout_us / 1e6


PRIORITIES = ("interactive", "batch")


def _traffic_options(body: InferenceRequestBody) -> tuple[str, str | None]:
    """The `priority` and `language` parameters, checked as /predict checks its fields."""
    parameters = body.parameters or {}
    priority = parameters.get("priority", "interactive")
    if priority not in PRIORITIES or not isinstance(priority, str):
        raise _bad_request(f"parameter 'priority' must be one of {', '.join(PRIORITIES)}")
    language = parameters.get("language")
    if language is not None and not (isinstance(language, str) and 1 <= len(language) <= 35):
        raise _bad_request("parameter 'language' must be a language code of 1 to 35 characters (e.g. fr)")
    return priority, language


def _binary_outputs(body: InferenceRequestBody, outputs: tuple[str, ...]) -> frozenset[str]:
    """The outputs to send as binary data: ``binary_data`` of the output, else the request's ``binary_data_output``."""
    default = (body.parameters or {}).get("binary_data_output", False)
    if not isinstance(default, bool):
        raise _bad_request("parameter 'binary_data_output' must be a boolean")
    asked = {output.name: output.parameters or {} for output in body.outputs or []}
    binary = set()
    for name in outputs:
        value = asked.get(name, {}).get("binary_data", default)
        if not isinstance(value, bool):
            raise _bad_request(f"output {name!r}: parameter 'binary_data' must be a boolean")
        if value:
            binary.add(name)
    return frozenset(binary)


def _render(
    body: InferenceRequestBody, outputs: tuple[str, ...], binary: frozenset[str] = frozenset()
) -> Callable[[PredictionResult], bytes | RenderedBody]:
    def render(result: PredictionResult) -> bytes | RenderedBody:
        probabilities = result.probabilities
        count = len(probabilities)
        tensors: list[dict[str, Any]] = []
        buffers: list[bytes] = []
        for name in outputs:
            if name == "label":
                labels = [LABELS[index] for index in np.argmax(probabilities, axis=1).tolist()]
                tensor: dict[str, Any] = {"name": "label", "datatype": "BYTES", "shape": [count]}
                if name in binary:
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
                if name in binary:
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
        if body.id is not None:
            response["id"] = body.id
        if not buffers:
            return orjson.dumps(response)
        content, headers = binary_tensors.encode_response(response, buffers)
        return RenderedBody(content, binary_tensors.MEDIA_TYPE, headers)

    return render


def _model_metadata(runtime: VariantRuntime) -> ModelMetadata:
    spec = runtime.spec
    described = runtime.describe()
    return ModelMetadata(
        name=spec.name,
        versions=[MODEL_VERSION],
        platform="pytorch_transformers",
        inputs=[TensorMetadata(name=name, datatype="BYTES", shape=[-1]) for name in INPUT_NAMES],
        outputs=[
            TensorMetadata(name="label", datatype="BYTES", shape=[-1]),
            TensorMetadata(
                name="probabilities", datatype="FP32", shape=[-1, len(LABELS)], parameters={"label_order": LABEL_ORDER}
            ),
        ],
        parameters={
            "label_order": LABEL_ORDER,
            "base_model": spec.base_model,
            "intermediate_task": spec.intermediate_task,
            "device": described["device"],
            "dtype": described["dtype"],
            "untrained_demo": described["untrained"],
        },
    )


EXTENSIONS = ["binary_tensor_data", "model_repository"]


@router.get("", response_model=ServerMetadata)
async def server_metadata(request: Request) -> ServerMetadata:
    return ServerMetadata(name="xnli-serve", version=__version__, extensions=EXTENSIONS)


@router.get("/health/live", response_model=Liveness, responses={503: {"model": Liveness}})
async def server_live(request: Request) -> Response:
    live = request.app.state.engine.live
    return Response(
        Liveness(live=live).model_dump_json(), status_code=200 if live else 503, media_type="application/json"
    )


@router.get("/health/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def server_ready(request: Request) -> Response:
    ready = request.app.state.engine.ready
    return Response(
        Readiness(ready=ready).model_dump_json(exclude_none=True),
        status_code=200 if ready else 503,
        media_type="application/json",
    )


@router.get("/models/{name}", response_model=ModelMetadata, responses=_ERRORS, response_model_exclude_none=True)
@router.get(
    "/models/{name}/versions/{version}",
    response_model=ModelMetadata,
    responses=_ERRORS,
    response_model_exclude_none=True,
)
async def model_metadata(request: Request, name: str, version: str | None = None) -> ModelMetadata:
    return _model_metadata(_model(request, name, version))


@router.get("/models/{name}/ready", response_model=Readiness, responses=_ERRORS)
@router.get("/models/{name}/versions/{version}/ready", response_model=Readiness, responses=_ERRORS)
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    runtime = _model(request, name, version)
    engine: Engine = request.app.state.engine
    ready = engine.variant_ready(runtime.spec.name)  # this variant alone: others may be loading or failed
    return Response(
        Readiness(name=runtime.spec.name, ready=ready).model_dump_json(),
        status_code=200 if ready else 503,
        media_type="application/json",
    )


# Protocol clients (tritonclient among them) post JSON without a Content-Type, so the body is parsed here rather than
# by FastAPI's JSON-only body handling; the schema is still published.
_REF = "#/components/schemas/{model}"
_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="InferenceRequestBody")}}},
    }
}


def openapi_components() -> dict[str, Any]:
    """Schemas the hand-parsed infer body refers to, for the app to add to its OpenAPI components."""
    schema = InferenceRequestBody.model_json_schema(ref_template=_REF)
    components: dict[str, Any] = schema.pop("$defs", {})
    components["InferenceRequestBody"] = schema
    return components


async def _read_body(request: Request) -> tuple[InferenceRequestBody, list[memoryview | None]]:
    """The JSON header and, per input, its slice of the binary data (None for a JSON tensor); the body limit
    (XNLI_SERVE_MAX_BODY_BYTES) has already bounded everything read here."""
    raw = await request.body()
    try:
        head, tail = binary_tensors.split_body(raw, request.headers.get(binary_tensors.HEADER_LENGTH))
        body = InferenceRequestBody.model_validate_json(head)
        sizes = [
            (tensor.name, binary_tensors.binary_data_size(tensor.parameters, tensor.name)) for tensor in body.inputs
        ]
        segments = binary_tensors.slice_inputs(sizes, tail)
    except BinaryTensorError as error:
        raise _bad_request(str(error)) from None
    except ValidationError as error:
        raise _bad_request(f"invalid inference request: {first_problem(error)}") from None
    for tensor, segment in zip(body.inputs, segments, strict=True):
        if segment is not None and tensor.data is not None:
            raise _bad_request(f"input {tensor.name!r} has both data and a binary_data_size parameter")
    return body, segments


@router.post("/models/{name}/infer", response_model=InferenceResponseBody, responses=_ERRORS, openapi_extra=_INFER_BODY)
@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferenceResponseBody,
    responses=_ERRORS,
    openapi_extra=_INFER_BODY,
)
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """Same engine, batching and metrics as /predict: v2 and native pairs share batches."""
    runtime = _model(request, name, version)
    body, segments = await _read_body(request)
    truncate, timeout_s = _options(body)
    priority, language = _traffic_options(body)
    outputs = _requested_outputs(body)
    binary = _binary_outputs(body, outputs)
    max_pairs = request.app.state.settings.max_pairs_per_request
    return await run_prediction(
        request,
        runtime.spec.name,
        lambda: _pairs(body, max_pairs, segments),
        _render(body, outputs, binary),
        "v2_infer",
        truncate,
        timeout_s,
        priority=priority,
        language=language,
    )
