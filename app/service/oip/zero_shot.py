"""Zero-shot classification through the protocol's infer (issue #26), for every wire: a request to a variant's model
whose inputs are ``text`` (BYTES, [n] or [n, 1]) and ``candidate_labels`` (BYTES, [k] or [k, 1]) is a zero-shot
request instead of an NLI one; parameters ``hypothesis_template`` (string with ``{}`` once) and ``multi_label``
(bool) as on POST /zero-shot, besides the usual ``truncate``, ``timeout``, ``priority`` and ``language``. Outputs:
``labels`` (BYTES, [n, k], each text's labels best first) and ``scores`` (FP32, [n, k], in the order of ``labels``).

The same model name serves both tasks, so nothing about the repository (index, load, unload, readiness) changes;
a transport reads its wire into an ``InferenceRequest``, asks :func:`is_zero_shot`, builds the query with
:func:`zero_shot_query`, plans it (``app.service.zero_shot.plan``), predicts ``plan.query`` through the prediction
service and writes :func:`zero_shot_response` out.
"""

from __future__ import annotations

import numpy as np

from app.engine.contract import EngineResult
from app.service.errors import InvalidInferenceRequest
from app.service.oip.model import (
    MODEL_VERSION,
    ZERO_SHOT_INPUT_NAMES,
    ZERO_SHOT_OUTPUT_NAMES,
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    OutputTensor,
    Parameter,
)
from app.service.oip.requests import InferOptions, read_strings
from app.service.zero_shot import ZeroShotPlan, ZeroShotQuery

INPUT_NAMES = ZERO_SHOT_INPUT_NAMES
OUTPUT_NAMES = ZERO_SHOT_OUTPUT_NAMES
PARAMETER_NAMES = ("hypothesis_template", "multi_label")

METADATA: dict[str, Parameter] = {
    # What GET /v2/models/{name} says of the second task the model serves (its inputs and outputs list NLI's).
    "zero_shot_inputs": "text: BYTES [-1]; candidate_labels: BYTES [-1]",
    "zero_shot_outputs": "labels: BYTES [-1, -1] (best first); scores: FP32 [-1, -1] (in the order of labels)",
    "zero_shot_parameters": "hypothesis_template: string with {} once; multi_label: bool",
}


def is_zero_shot(request: InferenceRequest) -> bool:
    """A request that names either zero-shot input is one (and must then name both)."""
    return any(tensor.name in INPUT_NAMES for tensor in request.inputs)


def zero_shot_query(
    request: InferenceRequest, options: InferOptions, variant: str, max_pairs: int, routing_key: str | None = None
) -> ZeroShotQuery:
    """The tensors and parameters as a zero-shot query; its own rules (labels, template, texts x labels) are checked
    by ``plan``, answered like /zero-shot's (422 / 413)."""
    tensors: dict[str, InputTensor] = {}
    for tensor in request.inputs:
        if tensor.name not in INPUT_NAMES:
            raise InvalidInferenceRequest(
                f"unexpected input {tensor.name!r}; zero-shot inputs are {', '.join(INPUT_NAMES)}"
            )
        if tensor.name in tensors:
            raise InvalidInferenceRequest(f"input {tensor.name!r} given twice")
        tensors[tensor.name] = tensor
    missing = [name for name in INPUT_NAMES if name not in tensors]
    if missing:
        raise InvalidInferenceRequest(f"missing input {missing[0]!r}; zero-shot inputs are {', '.join(INPUT_NAMES)}")
    texts = read_strings(tensors["text"], max_pairs, request)
    labels = read_strings(tensors["candidate_labels"], max_pairs, request)
    parameters = request.parameters
    template = parameters.get("hypothesis_template")
    if template is not None and not isinstance(template, str):
        raise InvalidInferenceRequest("parameter 'hypothesis_template' must be a string with {} once")
    multi_label = parameters.get("multi_label", False)
    if not isinstance(multi_label, bool):
        raise InvalidInferenceRequest("parameter 'multi_label' must be a boolean")
    return ZeroShotQuery(
        texts=texts,
        candidate_labels=labels,
        hypothesis_template=template,
        multi_label=multi_label,
        variant=variant,
        routing_key=routing_key,
        truncate=options.truncate,
        timeout_s=options.timeout_s,
        priority=options.priority,
        language=options.language,
    )


def zero_shot_response(
    planned: ZeroShotPlan, result: EngineResult, outputs: tuple[str, ...], request_id: str | None
) -> InferenceResponse:
    """``outputs`` as :func:`~app.service.oip.requests.read_options` checked them (the zero-shot names)."""
    answers = planned.classify(result)
    shape = [len(answers), len(planned.labels)]
    tensors: list[OutputTensor] = []
    for name in outputs:
        if name == "labels":
            flat = [label for answer in answers for label in answer.labels]
            tensors.append(OutputTensor("labels", "BYTES", shape, {}, flat))
        else:
            scores = np.asarray([answer.scores for answer in answers], dtype=np.float32).reshape(shape)
            tensors.append(OutputTensor("scores", "FP32", shape, {}, scores))
    truncated = ",".join(str(index) for index, answer in enumerate(answers) if answer.truncated)
    parameters: dict[str, Parameter] = {
        "hypothesis_template": planned.template,
        "multi_label": planned.multi_label,
        "truncated_texts": truncated,
    }
    return InferenceResponse(result.variant, MODEL_VERSION, parameters, tensors, request_id)
