from __future__ import annotations

import pytest

from app.engine.models.labels import LABELS, LabelMappingError, label_permutation


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
    permutation = label_permutation(id2label)
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
        label_permutation(id2label)
    assert expected in str(raised.value)
