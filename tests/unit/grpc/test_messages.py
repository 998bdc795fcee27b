"""gRPC messages to the protocol's neutral request and back: both ways of carrying BYTES inputs, the raw and the
typed output forms, parameters, and the refusals only this wire has."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import InferInput, InferRequestedOutput, InferResult, service_pb2

from app.engine.contract import EngineResult, Timings
from app.grpc import messages
from app.grpc.proto import open_inference_pb2 as pb
from app.service.errors import InvalidInferenceRequest, TooManyPairsError
from app.service.prediction import PredictionQuery

PAIRS = [("Il pleut sur la ville.", "Le ciel est clair."), ("Она читает книгу.", "Она что-то читает.")]
RESULT = EngineResult(
    "xlmr-mnli",
    np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype=np.float32),
    [False, True],
    Timings(0.001, 0.002, 0.003, 0.006),
)


def tritonclient_message(pairs: list[tuple[str, str]], outputs: tuple[str, ...] = ()) -> pb.ModelInferRequest:
    """What tritonclient.grpc sends on its defaults (raw_input_contents), read back as our message."""
    request = service_pb2.ModelInferRequest(model_name="xlmr-mnli", id="req-1")
    for position, name in enumerate(("premise", "hypothesis")):
        tensor = InferInput(name, [len(pairs)], "BYTES")
        tensor.set_data_from_numpy(np.array([pair[position] for pair in pairs], dtype=object))
        request.inputs.extend([tensor._get_tensor()])
        request.raw_input_contents.extend([tensor._get_content()])
    request.outputs.extend([InferRequestedOutput(name)._get_tensor() for name in outputs])
    return pb.ModelInferRequest.FromString(request.SerializeToString())


def contents_message(pairs: list[tuple[str, str]], **parameters: bool | int) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="xlmr-mnli")
    for position, name in enumerate(("premise", "hypothesis")):
        tensor = message.inputs.add(name=name, datatype="BYTES", shape=[len(pairs)])
        tensor.contents.bytes_contents.extend(pair[position].encode("utf-8") for pair in pairs)
    for key, value in parameters.items():
        if isinstance(value, bool):
            message.parameters[key].bool_param = value
        else:
            message.parameters[key].int64_param = value
    return message


def parse(message: pb.ModelInferRequest, deadline_s: float | None = None) -> messages.GrpcInferRequest:
    return messages.infer_request(message, "xlmr-mnli", 64, None, deadline_s)


def query_of(message: pb.ModelInferRequest, deadline_s: float | None = None) -> PredictionQuery:
    parsed = parse(message, deadline_s)
    assert parsed.query is not None
    assert parsed.zero_shot is None
    return parsed.query


def zero_shot_message(texts: list[str], labels: list[str], **parameters: str | bool) -> pb.ModelInferRequest:
    """Zero-shot (issue #26) as tritonclient.grpc sends it on its defaults: inputs text and candidate_labels, raw."""
    request = service_pb2.ModelInferRequest(model_name="xlmr-mnli", id="zs-1")
    for name, values in (("text", texts), ("candidate_labels", labels)):
        tensor = InferInput(name, [len(values)], "BYTES")
        tensor.set_data_from_numpy(np.array(values, dtype=object))
        request.inputs.extend([tensor._get_tensor()])
        request.raw_input_contents.extend([tensor._get_content()])
    message = pb.ModelInferRequest.FromString(request.SerializeToString())
    for key, value in parameters.items():
        if isinstance(value, bool):
            message.parameters[key].bool_param = value
        else:
            message.parameters[key].string_param = value
    return message


def test_text_and_candidate_labels_make_a_zero_shot_request() -> None:
    texts, labels = ["Der Zug fährt um neun ab."], ["Reisen", "Sport"]
    message = zero_shot_message(texts, labels, hypothesis_template="Es geht um {}.")
    message.parameters["multi_label"].bool_param = True
    parsed = parse(message)
    assert parsed.query is None
    assert parsed.zero_shot is not None
    asked = parsed.zero_shot
    assert (list(asked.texts), list(asked.candidate_labels)) == (texts, labels)
    assert (asked.hypothesis_template, asked.multi_label, asked.variant) == ("Es geht um {}.", True, "xlmr-mnli")


@pytest.mark.parametrize("message", [tritonclient_message(PAIRS), contents_message(PAIRS)], ids=["raw", "contents"])
def test_both_input_forms_read_the_same_pairs(message: pb.ModelInferRequest) -> None:
    assert list(query_of(message).pairs) == PAIRS


def test_raw_entries_must_match_the_inputs() -> None:
    message = tritonclient_message(PAIRS)
    del message.raw_input_contents[1]
    with pytest.raises(InvalidInferenceRequest, match="raw_input_contents has 1 entries for 2 inputs"):
        parse(message)


def test_an_input_in_both_forms_is_refused() -> None:
    message = tritonclient_message(PAIRS)
    message.inputs[0].contents.bytes_contents.append(b"x")
    with pytest.raises(InvalidInferenceRequest, match="both contents and raw_input_contents"):
        parse(message)


def test_an_input_with_no_data_names_both_fields() -> None:
    message = contents_message(PAIRS)
    message.inputs[1].ClearField("contents")
    with pytest.raises(InvalidInferenceRequest, match="neither contents nor raw_input_contents"):
        parse(message)


def test_invalid_utf8_is_refused() -> None:
    message = contents_message(PAIRS)
    message.inputs[0].contents.bytes_contents[0] = b"\xff\xfe"
    with pytest.raises(InvalidInferenceRequest, match="not valid UTF-8"):
        parse(message)


def test_too_many_pairs_by_shape() -> None:
    message = tritonclient_message(PAIRS)
    message.inputs[0].shape[0] = message.inputs[1].shape[0] = 65
    with pytest.raises(TooManyPairsError):
        parse(message)


def test_a_parameter_without_a_value_is_refused() -> None:
    message = contents_message(PAIRS)
    message.parameters["timeout"].SetInParent()
    with pytest.raises(InvalidInferenceRequest, match="parameter 'timeout' has no value"):
        parse(message)


@pytest.mark.parametrize(
    ("timeout_us", "deadline_s", "expected_s"),
    [(None, None, None), (None, 2.0, 2.0), (500_000, 2.0, 0.5), (5_000_000, 2.0, 2.0)],
)
def test_the_call_deadline_shortens_the_timeout(
    timeout_us: int | None, deadline_s: float | None, expected_s: float | None
) -> None:
    message = contents_message(PAIRS) if timeout_us is None else contents_message(PAIRS, timeout=timeout_us)
    assert query_of(message, deadline_s).timeout_s == expected_s


def test_raw_outputs_read_back_by_tritonclient() -> None:
    request = parse(tritonclient_message(PAIRS))
    assert request.raw_outputs
    response = messages.infer_response(request, RESULT)
    result = InferResult(service_pb2.ModelInferResponse.FromString(response.SerializeToString()))
    np.testing.assert_array_equal(result.as_numpy("probabilities"), RESULT.probabilities)
    assert result.as_numpy("label").tolist() == [b"entailment", b"contradiction"]
    assert response.id == "req-1"
    assert response.parameters["truncated_pairs"].string_param == "1"
    assert response.parameters["label_order"].string_param == "entailment,neutral,contradiction"


def test_typed_contents_when_asked() -> None:
    request = parse(contents_message(PAIRS, binary_data_output=False))
    response = messages.infer_response(request, RESULT)
    assert not response.raw_output_contents
    label, probabilities = response.outputs
    assert list(label.contents.bytes_contents) == [b"entailment", b"contradiction"]
    np.testing.assert_allclose(list(probabilities.contents.fp32_contents), RESULT.probabilities.reshape(-1))
    assert list(probabilities.shape) == [2, 3]


def test_outputs_in_the_order_asked() -> None:
    request = parse(tritonclient_message(PAIRS, outputs=("probabilities",)))
    response = messages.infer_response(request, RESULT)
    assert [output.name for output in response.outputs] == ["probabilities"]
    assert len(response.raw_output_contents) == 1


def test_the_output_form_parameter_must_be_a_boolean() -> None:
    with pytest.raises(InvalidInferenceRequest, match="binary_data_output"):
        parse(contents_message(PAIRS, binary_data_output=1))
