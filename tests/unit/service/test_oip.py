"""The transport-neutral Open Inference Protocol: tensors from any wire (values, as JSON and gRPC's ``contents`` carry
them, or the protocol's raw bytes, as the binary extension and gRPC's ``raw_input_contents`` do) to a prediction
query, and results to typed output tensors; nothing of HTTP in it."""

from __future__ import annotations

import struct
import sys
from typing import Any

import grimp
import numpy as np
import pytest

from app.engine.contract import EngineResult, Timings
from app.service.errors import (
    ErrorKind,
    InvalidInferenceRequest,
    TooManyPairsError,
    UnknownModelVersionError,
    failure_of,
)
from app.service.oip.model import (
    LABEL_ORDER,
    ContentFields,
    InferenceRequest,
    InputTensor,
    RequestedOutput,
)
from app.service.oip.requests import check_version, prediction_query, read_options
from app.service.oip.responses import inference_response
from app.service.oip.tensors import decode_bytes, encode_bytes, encode_fp32
from tests.conftest import REPO_ROOT

GRPC = ContentFields(values="contents", raw="raw_input_contents")
PREMISES = ["Il pleut depuis ce matin.", "他在喝茶。"]
HYPOTHESES = ["Le sol est mouillé.", "他在喝饮料。"]
MAX_PAIRS = 8


def request(
    premise: InputTensor | None = None,
    hypothesis: InputTensor | None = None,
    parameters: dict[str, Any] | None = None,
    outputs: list[RequestedOutput] | None = None,
) -> InferenceRequest:
    inputs = [
        premise or InputTensor("premise", "BYTES", [len(PREMISES)], values=PREMISES),
        hypothesis or InputTensor("hypothesis", "BYTES", [len(HYPOTHESES)], values=HYPOTHESES),
    ]
    return InferenceRequest(inputs, GRPC, parameters or {}, outputs or [], id="7")


def pairs_of(infer: InferenceRequest) -> list[tuple[str, str]]:
    return list(prediction_query(infer, read_options(infer), "alpha", MAX_PAIRS).pairs)


def raw(texts: list[str]) -> bytes:
    return encode_bytes(texts)


EXPECTED = list(zip(PREMISES, HYPOTHESES, strict=True))


@pytest.mark.parametrize(
    ("premise", "hypothesis"),
    [
        (
            InputTensor("premise", "BYTES", [2], values=PREMISES),
            InputTensor("hypothesis", "BYTES", [2], values=HYPOTHESES),
        ),
        (
            InputTensor("premise", "BYTES", [2], raw=raw(PREMISES)),
            InputTensor("hypothesis", "BYTES", [2], raw=memoryview(raw(HYPOTHESES))),
        ),
        (
            InputTensor("premise", "BYTES", [2], raw=raw(PREMISES)),
            InputTensor("hypothesis", "BYTES", [2], values=HYPOTHESES),
        ),
        (  # gRPC's bytes_contents: UTF-8 bytes per element
            InputTensor("premise", "BYTES", [2], values=[text.encode() for text in PREMISES]),
            InputTensor("hypothesis", "BYTES", [2, 1], values=[[text] for text in HYPOTHESES]),
        ),
    ],
    ids=["values", "raw", "raw-and-values", "bytes-values-and-nested-rows"],
)
def test_tensors_from_any_wire_read_as_the_same_pairs(premise: InputTensor, hypothesis: InputTensor) -> None:
    assert pairs_of(request(premise, hypothesis)) == EXPECTED


def test_options_and_the_query_they_make() -> None:
    infer = request(
        parameters={"truncate": False, "timeout": 250_000, "priority": "batch", "language": "fr"},
        outputs=[RequestedOutput("probabilities"), RequestedOutput("label")],
    )
    options = read_options(infer)
    query = prediction_query(infer, options, "alpha", MAX_PAIRS, routing_key="user-1")
    assert (query.variant, query.routing_key, query.truncate, query.timeout_s, query.priority, query.language) == (
        "alpha",
        "user-1",
        False,
        0.25,
        "batch",
        "fr",
    )
    assert options.outputs == ("probabilities", "label")
    assert read_options(request()).outputs == ("label", "probabilities")


def refusal(infer: InferenceRequest) -> str:
    with pytest.raises(InvalidInferenceRequest) as raised:
        pairs_of(infer)
    assert failure_of(raised.value).kind is ErrorKind.INVALID_ARGUMENT
    return str(raised.value)


@pytest.mark.parametrize(
    ("premise", "message"),
    [
        (InputTensor("premise", "BYTES", [2]), "input 'premise' has neither contents nor raw_input_contents"),
        (
            InputTensor("premise", "BYTES", [2], values=PREMISES, raw=raw(PREMISES)),
            "input 'premise' has both contents and raw_input_contents",
        ),
        (InputTensor("premise", "FP32", [2], values=PREMISES), "has datatype FP32; expected BYTES"),
        (InputTensor("premise", "BYTES", [2, 2], values=PREMISES), "has shape [2, 2]; expected [n] or [n, 1]"),
        (InputTensor("premise", "BYTES", [2], raw=raw(PREMISES)[:-3]), "element 1 declares"),
        (InputTensor("premise", "BYTES", [2], raw=raw(PREMISES) + b"\x00"), "1 bytes are left after its 2 elements"),
        (InputTensor("premise", "BYTES", [2], raw=struct.pack("<I", 2) + b"\xff\xfe" + raw(PREMISES[1:])), "UTF-8"),
        (InputTensor("premise", "BYTES", [2], values=[b"\xff", b"ok"]), "element 0 is not valid UTF-8"),
        (InputTensor("premise", "BYTES", [2], values=[1, "x"]), "element 0 is int; expected a string"),
        (InputTensor("premise", "BYTES", [2], values=["  ", "x"]), "element 0 is empty or blank"),
        (InputTensor("premise", "BYTES", [2], values=PREMISES * 2), "has shape [2] but 4 rows"),
    ],
    ids=[
        "neither",
        "both",
        "datatype",
        "shape",
        "raw-truncated",
        "raw-left-over",
        "raw-not-utf8",
        "bytes-not-utf8",
        "not-a-string",
        "blank",
        "rows",
    ],
)
def test_malformed_tensors_are_invalid_arguments_named_in_the_wires_terms(premise: InputTensor, message: str) -> None:
    assert message in refusal(request(premise))


def test_a_shape_over_the_pair_limit_is_too_large_before_any_element_is_read() -> None:
    lying = InputTensor("premise", "BYTES", [10_000], raw=b"")  # would fail decoding if it were read
    hypothesis = InputTensor("hypothesis", "BYTES", [10_000], values=["x"])
    with pytest.raises(TooManyPairsError) as raised:
        pairs_of(request(lying, hypothesis))
    assert failure_of(raised.value).kind is ErrorKind.TOO_LARGE


@pytest.mark.parametrize(
    ("parameters", "outputs", "message"),
    [
        ({"truncate": "no"}, [], "parameter 'truncate' must be a boolean"),
        ({"timeout": 0}, [], "parameter 'timeout' must be a number of microseconds"),
        ({"priority": "urgent"}, [], "parameter 'priority' must be one of interactive, batch"),
        ({"language": 3}, [], "parameter 'language' must be a language code"),
        ({}, [RequestedOutput("logits")], "unknown output 'logits'"),
        ({}, [RequestedOutput("label"), RequestedOutput("label")], "output named more than once"),
    ],
)
def test_options_are_checked(parameters: dict[str, Any], outputs: list[RequestedOutput], message: str) -> None:
    with pytest.raises(InvalidInferenceRequest, match=message):
        read_options(request(parameters=parameters, outputs=outputs))


def test_a_version_other_than_1_is_not_found() -> None:
    check_version("alpha", None)
    check_version("alpha", "1")
    with pytest.raises(UnknownModelVersionError) as raised:
        check_version("alpha", "7")
    assert failure_of(raised.value).kind is ErrorKind.NOT_FOUND


def test_the_response_holds_the_outputs_asked_for_in_order_as_typed_tensors() -> None:
    infer = request(outputs=[RequestedOutput("probabilities"), RequestedOutput("label")])
    outputs = read_options(infer).outputs
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    result = EngineResult("alpha", probabilities, [False, True], Timings(0.0, 0.0, 0.0, 0.0))
    response = inference_response(result, outputs, "7")
    assert (response.model_name, response.model_version, response.id) == ("alpha", "1", "7")
    assert response.parameters == {"label_order": LABEL_ORDER, "truncated_pairs": "1"}
    scores, labels = response.outputs
    assert (scores.name, scores.datatype, scores.shape, scores.parameters) == (
        "probabilities",
        "FP32",
        [2, 3],
        {"label_order": LABEL_ORDER},
    )
    assert encode_fp32(np.asarray(scores.values)) == probabilities.astype("<f4").tobytes()
    assert (labels.name, labels.datatype, labels.shape, labels.values) == (
        "label",
        "BYTES",
        [2],
        ["entailment", "contradiction"],
    )
    assert decode_bytes(encode_bytes(["entailment", "contradiction"]), 2, "label") == labels.values


def test_the_service_layer_imports_nothing_of_http() -> None:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    graph = grimp.build_graph("app", include_external_packages=True, cache_dir=None)
    for layer in ("app.api", "fastapi", "starlette"):
        chains = graph.find_shortest_chains(importer="app.service", imported=layer, as_packages=True)
        assert not chains, f"app.service reaches {layer}: {sorted(chains)}"
