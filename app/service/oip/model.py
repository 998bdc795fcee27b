"""The protocol's inference request and response as plain typed data, the same whichever wire carried them.

A tensor's elements arrive either as values (HTTP's JSON ``data``, gRPC's ``contents``) or as the protocol's raw
serialization (HTTP's binary tensor extension, gRPC's ``raw_input_contents``): :class:`InputTensor` holds one of the
two and the parser reads both. Each catalogue variant is a model with one version, "1".

Plain (not frozen) slotted dataclasses: a few are built for every request, and a frozen one costs three times as much
to build; nothing mutates them after the transport has read its wire.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from app.engine.tasks.nli import LABELS

MODEL_VERSION = "1"
INPUT_NAMES = ("premise", "hypothesis")
OUTPUT_NAMES = ("label", "probabilities")
# issue #26: the zero-shot task on the same model (app.service.oip.zero_shot)
ZERO_SHOT_INPUT_NAMES = ("text", "candidate_labels")
ZERO_SHOT_OUTPUT_NAMES = ("labels", "scores")
LABEL_ORDER = ",".join(LABELS)

Parameter = bool | int | float | str
Parameters = Mapping[str, Parameter]


@dataclass(frozen=True, slots=True)  # one per wire, built once
class ContentFields:
    """What a wire calls a tensor's two ways of carrying its elements, so that a message names the field to fix."""

    values: str  # HTTP: "data"; gRPC: "contents"
    raw: str  # HTTP: "a binary_data_size parameter"; gRPC: "raw_input_contents"


@dataclass(slots=True)
class InputTensor:
    """One input tensor: its elements as ``values`` (rows may nest as the shape does) or as ``raw`` bytes."""

    name: str
    datatype: str
    shape: list[int]
    values: Sequence[Any] | None = None
    raw: bytes | memoryview | None = None


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferenceRequest:
    """An infer request as read from its wire; nothing in it is checked yet."""

    inputs: Sequence[InputTensor]
    contents: ContentFields  # the wire's names for values and raw bytes, for its messages
    parameters: Parameters = field(default_factory=dict)
    outputs: Sequence[RequestedOutput] = ()  # none named: every output
    id: str | None = None


@dataclass(slots=True)
class OutputTensor:
    """One output tensor; each transport writes ``values`` as values or as raw bytes, as its client asked."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Parameter]
    values: list[str] | npt.NDArray[np.float32]


@dataclass(slots=True)
class InferenceResponse:
    model_name: str
    model_version: str
    parameters: dict[str, Parameter]
    outputs: list[OutputTensor]
    id: str | None = None
