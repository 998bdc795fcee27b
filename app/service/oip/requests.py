"""From an inference request, as any wire delivered it, to a prediction query: options first (cheap), then the
tensors, whose shapes and element counts are checked before any per-element work. Every problem is an
:class:`InvalidInferenceRequest` with the protocol's one-line message, or a :class:`TooManyPairsError` when a shape
declares more pairs than a request may carry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.service.errors import InvalidInferenceRequest, TooManyPairsError, UnknownModelVersionError
from app.service.oip.model import (  # issue #26
    INPUT_NAMES,
    MODEL_VERSION,
    OUTPUT_NAMES,
    ZERO_SHOT_INPUT_NAMES,
    ZERO_SHOT_OUTPUT_NAMES,
    InferenceRequest,
    InputTensor,
    Parameters,
)
from app.service.oip.tensors import decode_bytes, flatten
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


def check_version(name: str, version: str | None) -> None:
    """A request may name the model's version; every variant has one, :data:`MODEL_VERSION`."""
    if version is not None and version != MODEL_VERSION:
        raise UnknownModelVersionError(f"model {name!r} has no version {version!r}; versions: {MODEL_VERSION}")


@dataclass(slots=True)  # built per request: not frozen, which would cost three times as much
class InferOptions:
    """A request's parameters and output selection, checked."""

    truncate: bool
    timeout_s: float | None
    priority: str
    language: str | None
    outputs: tuple[str, ...]  # each at most once, in the order asked


def read_options(request: InferenceRequest) -> InferOptions:
    """The parameters, then the outputs: what a transport checks of its own (HTTP's ``binary_data``) comes after
    these and before :func:`prediction_query` reads the tensors."""
    parameters = request.parameters
    truncate, timeout_s = _deadline_options(parameters)
    priority, language = _traffic_options(parameters)
    return InferOptions(truncate, timeout_s, priority, language, _requested_outputs(request))


def prediction_query(
    request: InferenceRequest,
    options: InferOptions,
    variant: str,
    max_pairs: int,
    routing_key: str | None = None,
) -> PredictionQuery:
    """The tensors as pairs, with the options, for ``variant``."""
    return PredictionQuery(
        pairs=_pairs(request, max_pairs),
        variant=variant,
        routing_key=routing_key,
        truncate=options.truncate,
        timeout_s=options.timeout_s,
        priority=options.priority,
        language=options.language,
    )


def _strings(tensor: InputTensor, max_pairs: int, request: InferenceRequest) -> list[str]:
    """The tensor's strings, from its values or its raw bytes."""
    if tensor.datatype != "BYTES":
        raise InvalidInferenceRequest(f"input {tensor.name!r} has datatype {tensor.datatype}; expected BYTES")
    shape = tensor.shape
    if not shape or len(shape) > 2 or (len(shape) == 2 and shape[1] != 1) or any(dim < 0 for dim in shape):
        raise InvalidInferenceRequest(f"input {tensor.name!r} has shape {shape}; expected [n] or [n, 1]")
    count = shape[0]
    if count > max_pairs:
        raise TooManyPairsError(count, max_pairs)
    fields = request.contents
    values: list[Any] | None
    if tensor.raw is not None:
        if tensor.values is not None:
            raise InvalidInferenceRequest(f"input {tensor.name!r} has both {fields.values} and {fields.raw}")
        values = decode_bytes(tensor.raw, count, tensor.name)
    elif tensor.values is None:
        raise InvalidInferenceRequest(f"input {tensor.name!r} has neither {fields.values} nor {fields.raw}")
    elif len(tensor.values) != count:
        raise InvalidInferenceRequest(f"input {tensor.name!r} has shape {shape} but {len(tensor.values)} rows")
    else:
        values = flatten(tensor.values, count)
    if values is None or len(values) != count:
        raise InvalidInferenceRequest(f"input {tensor.name!r} has shape {shape} but its data does not match it")
    for index, value in enumerate(values):
        if not isinstance(value, str):
            value = values[index] = _as_string(value, tensor.name, index)
        problem = text_problem(value)
        if problem is not None:
            raise InvalidInferenceRequest(f"input {tensor.name!r} element {index} {problem}")
    return values


read_strings = _strings  # issue #26: zero-shot's text and candidate_labels tensors read by the same rule


def _as_string(value: object, name: str, index: int) -> str:
    """An element that is not a string: UTF-8 bytes (gRPC's ``bytes_contents``) decode; anything else is refused."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInferenceRequest(f"input {name!r}: element {index} is not valid UTF-8") from None
    raise InvalidInferenceRequest(f"input {name!r} element {index} is {type(value).__name__}; expected a string")


def _pairs(request: InferenceRequest, max_pairs: int) -> list[tuple[str, str]]:
    tensors: dict[str, InputTensor] = {}
    for tensor in request.inputs:
        if tensor.name not in INPUT_NAMES:
            raise InvalidInferenceRequest(f"unexpected input {tensor.name!r}; inputs are {', '.join(INPUT_NAMES)}")
        if tensor.name in tensors:
            raise InvalidInferenceRequest(f"input {tensor.name!r} given twice")
        tensors[tensor.name] = tensor
    missing = [name for name in INPUT_NAMES if name not in tensors]
    if missing:
        raise InvalidInferenceRequest(f"missing input {missing[0]!r}; inputs are {', '.join(INPUT_NAMES)}")
    premise, hypothesis = tensors["premise"], tensors["hypothesis"]
    if premise.shape[:1] != hypothesis.shape[:1]:
        raise InvalidInferenceRequest(f"premise has shape {premise.shape} but hypothesis has shape {hypothesis.shape}")
    premises = _strings(premise, max_pairs, request)
    hypotheses = _strings(hypothesis, max_pairs, request)
    if not premises:
        raise InvalidInferenceRequest("inputs are empty")
    return list(zip(premises, hypotheses, strict=True))


def _requested_outputs(request: InferenceRequest) -> tuple[str, ...]:
    """Each output at most once: a response never grows with how often a client names an output."""
    # issue #26: a zero-shot request (inputs text + candidate_labels) has outputs of its own
    zero_shot = any(tensor.name in ZERO_SHOT_INPUT_NAMES for tensor in request.inputs)
    known = ZERO_SHOT_OUTPUT_NAMES if zero_shot else OUTPUT_NAMES
    if not request.outputs:
        return known
    names = tuple(output.name for output in request.outputs)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise InvalidInferenceRequest(f"unknown output {unknown[0]!r}; outputs are {', '.join(known)}")
    if len(set(names)) != len(names):
        raise InvalidInferenceRequest(f"output named more than once in {list(names)}")
    return names


def _deadline_options(parameters: Parameters) -> tuple[bool, float | None]:
    truncate = parameters.get("truncate", True)
    if not isinstance(truncate, bool):
        raise InvalidInferenceRequest("parameter 'truncate' must be a boolean")
    timeout_us = parameters.get("timeout")
    if timeout_us is None:
        return truncate, None
    if (
        isinstance(timeout_us, bool | str)
        or not 0 < timeout_us <= MAX_TIMEOUT_US  # NaN fails this too; a huge int never reaches float()
    ):
        raise InvalidInferenceRequest(f"parameter 'timeout' must be a number of microseconds in (0, {MAX_TIMEOUT_US}]")
    return truncate, timeout_us / 1e6


def _traffic_options(parameters: Parameters) -> tuple[str, str | None]:
    """The `priority` and `language` parameters, checked by the rules /predict's schema declares."""
    priority = parameters.get("priority", DEFAULT_PRIORITY)
    if not isinstance(priority, str) or priority not in CLIENT_PRIORITIES:
        raise InvalidInferenceRequest(f"parameter 'priority' must be one of {', '.join(CLIENT_PRIORITIES)}")
    language = parameters.get("language")
    if language is not None and not (isinstance(language, str) and is_language_code(language)):
        raise InvalidInferenceRequest(
            f"parameter 'language' must be a language code of {LANGUAGE_MIN_CHARS} to {LANGUAGE_MAX_CHARS} "
            "characters (e.g. fr)"
        )
    return priority, language
