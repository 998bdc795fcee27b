"""Bodies of the Open Inference Protocol, as published in OpenAPI.

Each catalogue variant is a model with one version, "1". Inputs are two BYTES tensors, ``premise`` and
``hypothesis``, of equal length; outputs are ``label`` (BYTES, [n]) and ``probabilities`` (FP32, [n, 3], columns in
the order given by the ``label_order`` parameter). Errors are ``{"error": "<message>"}`` as the protocol specifies.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# The protocol's names are the transport-neutral model's, re-exported for the routes and the rendering.
from app.service.oip.model import INPUT_NAMES as INPUT_NAMES
from app.service.oip.model import LABEL_ORDER as LABEL_ORDER
from app.service.oip.model import MODEL_VERSION as MODEL_VERSION
from app.service.oip.model import OUTPUT_NAMES as OUTPUT_NAMES

EXTENSIONS = ["binary_tensor_data", "model_repository"]
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


def error_responses(*described: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the protocol's error statuses, each with its description."""
    return {status: {"model": OipError, "description": description} for status, description in described}


INFER_ERRORS = error_responses(
    (
        400,
        "Malformed request: wrong datatype, mismatched shapes, missing or unknown tensors, binary data whose sizes do "
        "not add up.",
    ),
    (404, "Unknown model or version."),
    (413, "Too many pairs, or body too large."),
    (429, "Overloaded; see Retry-After."),
    (500, "The forward pass of this request's batch failed."),
    (503, "Not ready, shutting down, or the deadline passed."),
)

# Protocol clients (tritonclient among them) post JSON without a Content-Type, so the infer body is parsed by hand
# rather than by FastAPI's JSON-only body handling; the schema is still published.
_REF = "#/components/schemas/{model}"
INFER_BODY: dict[str, Any] = {
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
