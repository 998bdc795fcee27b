"""Map a checkpoint's output indices to the service's label order, by label *name*.

Public XLM-R NLI checkpoints disagree on label order (joeddav: contradiction/neutral/entailment, symanto:
ENTAILMENT/NEUTRAL/CONTRADICTION), so guessing by index silently swaps answers.
"""

from __future__ import annotations

from collections.abc import Mapping

LABELS: tuple[str, str, str] = ("entailment", "neutral", "contradiction")


class LabelMappingError(ValueError):
    """The checkpoint's id2label cannot be read as the three NLI labels."""


def label_permutation(id2label: Mapping[int | str, str]) -> tuple[int, ...]:
    """Return ``perm`` with ``perm[i]`` = the model output index of ``LABELS[i]``."""
    by_name: dict[str, int] = {}
    for raw_index, raw_name in id2label.items():
        name = str(raw_name).strip().lower()
        index = int(raw_index)
        if name in by_name:
            raise LabelMappingError(f"label {raw_name!r} appears twice in id2label {dict(id2label)!r}")
        by_name[name] = index
    unknown = sorted(set(by_name) - set(LABELS))
    missing = [label for label in LABELS if label not in by_name]
    if unknown or missing or len(by_name) != len(LABELS):
        raise LabelMappingError(
            f"id2label {dict(id2label)!r} must name exactly {', '.join(LABELS)} (any case); "
            f"missing {missing or 'none'}, unexpected {unknown or 'none'}. "
            "Set config.json's id2label/label2id to the names the checkpoint was trained with."
        )
    indices = sorted(by_name.values())
    if indices != list(range(len(LABELS))):
        raise LabelMappingError(f"id2label indices must be 0..{len(LABELS) - 1}, got {indices}")
    return tuple(by_name[label] for label in LABELS)
