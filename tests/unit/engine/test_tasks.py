"""The task seam: NLI's labels mapped by name from any public checkpoint order, its post-processing alike on torch
and NumPy, and its response rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.engine.tasks import LabelMappingError
from app.engine.tasks.nli import LABELS, NLI


@pytest.mark.parametrize(
    "id2label",
    [
        pytest.param({0: "contradiction", 1: "neutral", 2: "entailment"}, id="joeddav-xlm-roberta-large-xnli"),
        pytest.param({0: "ENTAILMENT", 1: "NEUTRAL", 2: "CONTRADICTION"}, id="symanto-xlm-roberta-base"),
        pytest.param({0: "entailment", 1: "neutral", 2: "contradiction"}, id="hf-xnli-dataset"),
        pytest.param({"2": "Entailment", "0": "Neutral", "1": "Contradiction"}, id="string-keys-mixed-case"),
    ],
)
def test_public_label_orders_map_by_name(id2label: dict[int | str, str]) -> None:
    permutation = NLI.label_order(id2label)
    for service_index, model_index in enumerate(permutation):
        named = {int(key): value.lower() for key, value in id2label.items()}[model_index]
        assert named == LABELS[service_index]


@pytest.mark.parametrize(
    ("id2label", "expected"),
    [
        ({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, "missing ['entailment', 'neutral', 'contradiction']"),
        ({0: "entailment", 1: "not_entailment"}, "unexpected ['not_entailment']"),
        ({0: "entailment", 1: "neutral", 2: "contradiction", 3: "other"}, "unexpected ['other']"),
        ({0: "entailment", 1: "Entailment", 2: "neutral"}, "appears twice"),
        ({0: "entailment", 1: "neutral", 5: "contradiction"}, "indices must be 0..2"),
    ],
)
def test_unmappable_labels_are_refused(id2label: dict[int | str, str], expected: str) -> None:
    with pytest.raises(LabelMappingError) as raised:
        NLI.label_order(id2label)
    assert expected in str(raised.value)


def test_scores_are_a_float32_softmax_in_service_order_on_torch_and_numpy_alike() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], dtype=torch.float16)
    order = NLI.label_order({0: "contradiction", 1: "neutral", 2: "entailment"})
    on_torch = NLI.scores(logits, torch.tensor(NLI.output_order(order)), torch.cat)
    assert on_torch.dtype == torch.float32
    expected = torch.softmax(logits.float(), dim=-1)[:, list(order)]
    assert torch.equal(on_torch[:, :3], expected)
    assert torch.equal(on_torch[:, 3:], logits.float()[:, list(order)])  # and the logits beside them (issue #26)
    on_numpy = NLI.scores_numpy(logits.float().numpy(), np.asarray(order, dtype=np.int64))
    np.testing.assert_allclose(on_numpy[:, :3], expected.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(on_numpy[:, 3:], logits.float().numpy()[:, list(order)])


def test_rows_name_the_top_label_and_every_score_in_service_order() -> None:
    scores = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]], dtype=np.float32)
    rows = NLI.rows(scores, [False, True])
    assert [row["label"] for row in rows] == ["contradiction", "entailment"]
    assert list(rows[0]["scores"]) == list(LABELS)
    assert rows[0]["scores"]["contradiction"] == pytest.approx(0.7)
    assert [row["truncated"] for row in rows] == [False, True]
