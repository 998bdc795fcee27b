"""From an infer request's bytes to a prediction query: JSON or binary tensors (the binary tensor extension), both
through the same checks; shapes and element counts are checked before any per-element work. Every problem is an
ApiError 400 (or 413 for too many pairs) with the protocol's one-line message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from app.api import binary_tensors
from app.api.binary_tensors import BinaryTensorError
from app.api.errors import ApiError, first_problem
from app.api.inference import too_many_pairs
from app.api.oip.schemas import INPUT_NAMES, OUTPUT_NAMES, InferenceRequestBody, RequestInput
from app.service.prediction import (
    CLIENT_PRIORITIES,
    DEFAULT_PRIORITY,
    LANGUAGE_MAX_CHARS,
    LANGUAGE_MIN_CHARS,
    MAX_TIMEOUT_MS,
    PredictionQuery,
    is_language_code,
)
from app.service.texts import text_problem

MAX_TIMEOUT_US = MAX_TIMEOUT_MS * 1000  # as /predict's timeout_ms allows


def bad_request(message: str) -> ApiError:
    return ApiError(400, "invalid_inference_request", message)


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A parsed infer request: the query for the prediction service and what its answer must carry."""

    query: PredictionQuery
    id: str | None
    outputs: tuple[str, ...]
    binary_outputs: frozenset[str]


def read_body(raw: bytes, header_length: str | None) -> tuple[InferenceRequestBody, list[memoryview | None]]:
    """The JSON header and, per input, its slice of the binary data (None for a JSON tensor); the body limit
    (XNLI_SERVE_MAX_BODY_BYTES) has already bounded everything read here."""
    try:
        head, tail = binary_tensors.split_body(raw, header_length)
        body = InferenceRequestBody.model_validate_json(head)
        sizes = [
            (tensor.name, binary_tensors.binary_data_size(tensor.parameters, tensor.name)) for tensor in body.inputs
        ]
        segments = binary_tensors.slice_inputs(sizes, tail)
    except BinaryTensorError as error:
        raise bad_request(str(error)) from None
    except ValidationError as error:
        raise bad_request(f"invalid inference request: {first_problem(error)}") from None
    for tensor, segment in zip(body.inputs, segments, strict=True):
        if segment is not None and tensor.data is not None:
            raise bad_request(f"input {tensor.name!r} has both data and a binary_data_size parameter")
    return body, segments


def infer_request(
    body: InferenceRequestBody,
    segments: list[memoryview | None],
    variant: str,
    max_pairs: int,
    routing_key: str | None = None,
) -> InferRequest:
    """Options first (cheap), then the tensors."""
    parameters = body.parameters or {}
    truncate, timeout_s = _options(parameters)
    priority, language = _traffic_options(parameters)
    outputs = _requested_outputs(body)
    binary = _binary_outputs(body, outputs)
    query = PredictionQuery(
        pairs=_pairs(body, max_pairs, segments),
        variant=variant,
        routing_key=routing_key,
        truncate=truncate,
        timeout_s=timeout_s,
        priority=priority,
        language=language,
    )
    return InferRequest(query, body.id, outputs, binary)


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
    """The tensor's strings, from its JSON data or its ``binary`` segment."""
    if tensor.datatype != "BYTES":
        raise bad_request(f"input {tensor.name!r} has datatype {tensor.datatype}; expected BYTES")
    shape = tensor.shape
    if not shape or len(shape) > 2 or (len(shape) == 2 and shape[1] != 1) or any(dim < 0 for dim in shape):
        raise bad_request(f"input {tensor.name!r} has shape {shape}; expected [n] or [n, 1]")
    count = shape[0]
    if count > max_pairs:
        raise too_many_pairs(count, max_pairs)
    if binary is not None:
        try:
            values: list[Any] | None = binary_tensors.decode_bytes(binary, count, tensor.name)
        except BinaryTensorError as error:
            raise bad_request(str(error)) from None
    elif tensor.data is None:
        raise bad_request(f"input {tensor.name!r} has neither data nor a binary_data_size parameter")
    elif len(tensor.data) != count:
        raise bad_request(f"input {tensor.name!r} has shape {shape} but {len(tensor.data)} rows")
    else:
        values = _flatten(tensor.data, count)
    if values is None or len(values) != count:
        raise bad_request(f"input {tensor.name!r} has shape {shape} but its data does not match it")
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise bad_request(f"input {tensor.name!r} element {index} is {type(value).__name__}; expected a string")
        problem = text_problem(value)
        if problem is not None:
            raise bad_request(f"input {tensor.name!r} element {index} {problem}")
    return values


def _pairs(body: InferenceRequestBody, max_pairs: int, segments: list[memoryview | None]) -> list[tuple[str, str]]:
    tensors: dict[str, RequestInput] = {}
    binary: dict[str, memoryview | None] = {}
    for tensor, segment in zip(body.inputs, segments, strict=True):
        if tensor.name not in INPUT_NAMES:
            raise bad_request(f"unexpected input {tensor.name!r}; inputs are {', '.join(INPUT_NAMES)}")
        if tensor.name in tensors:
            raise bad_request(f"input {tensor.name!r} given twice")
        tensors[tensor.name] = tensor
        binary[tensor.name] = segment
    missing = [name for name in INPUT_NAMES if name not in tensors]
    if missing:
        raise bad_request(f"missing input {missing[0]!r}; inputs are {', '.join(INPUT_NAMES)}")
    premise, hypothesis = tensors["premise"], tensors["hypothesis"]
    if premise.shape[:1] != hypothesis.shape[:1]:
        raise bad_request(f"premise has shape {premise.shape} but hypothesis has shape {hypothesis.shape}")
    premises = _strings(premise, max_pairs, binary["premise"])
    hypotheses = _strings(hypothesis, max_pairs, binary["hypothesis"])
    if not premises:
        raise bad_request("inputs are empty")
    return list(zip(premises, hypotheses, strict=True))


def _requested_outputs(body: InferenceRequestBody) -> tuple[str, ...]:
    """Each output at most once: a response never grows with how often a client names an output."""
    if not body.outputs:
        return OUTPUT_NAMES
    names = tuple(output.name for output in body.outputs)
    unknown = [name for name in names if name not in OUTPUT_NAMES]
    if unknown:
        raise bad_request(f"unknown output {unknown[0]!r}; outputs are {', '.join(OUTPUT_NAMES)}")
    if len(set(names)) != len(names):
        raise bad_request(f"output named more than once in {list(names)}")
    return names


def _options(parameters: dict[str, Any]) -> tuple[bool, float | None]:
    truncate = parameters.get("truncate", True)
    if not isinstance(truncate, bool):
        raise bad_request("parameter 'truncate' must be a boolean")
    timeout_us = parameters.get("timeout")
    if timeout_us is None:
        return truncate, None
    if (
        isinstance(timeout_us, bool | str)
        or not 0 < timeout_us <= MAX_TIMEOUT_US  # NaN fails this too; a huge int never reaches float()
    ):
        raise bad_request(f"parameter 'timeout' must be a number of microseconds in (0, {MAX_TIMEOUT_US}]")
    return truncate, timeout_us / 1e6


def _traffic_options(parameters: dict[str, Any]) -> tuple[str, str | None]:
    """The `priority` and `language` parameters, checked by the rules /predict's schema declares."""
    priority = parameters.get("priority", DEFAULT_PRIORITY)
    if not isinstance(priority, str) or priority not in CLIENT_PRIORITIES:
        raise bad_request(f"parameter 'priority' must be one of {', '.join(CLIENT_PRIORITIES)}")
    language = parameters.get("language")
    if language is not None and not is_language_code(language):
        raise bad_request(
            f"parameter 'language' must be a language code of {LANGUAGE_MIN_CHARS} to {LANGUAGE_MAX_CHARS} "
            "characters (e.g. fr)"
        )
    return priority, language


def _binary_outputs(body: InferenceRequestBody, outputs: tuple[str, ...]) -> frozenset[str]:
    """The outputs to send as binary data: ``binary_data`` of the output, else the request's ``binary_data_output``."""
    default = (body.parameters or {}).get("binary_data_output", False)
    if not isinstance(default, bool):
        raise bad_request("parameter 'binary_data_output' must be a boolean")
    asked = {output.name: output.parameters or {} for output in body.outputs or []}
    binary = set()
    for name in outputs:
        value = asked.get(name, {}).get("binary_data", default)
        if not isinstance(value, bool):
            raise bad_request(f"output {name!r}: parameter 'binary_data' must be a boolean")
        if value:
            binary.add(name)
    return frozenset(binary)
