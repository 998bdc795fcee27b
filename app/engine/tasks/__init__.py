"""Tasks: what a variant's inputs and outputs mean. Everything task-specific lives in one ``Task`` (the output labels
and how a checkpoint's head maps to them, the encoder of its inputs, the head's post-processing, the response rows),
so the scheduler, the backends and the transports stay the same when a task is added: a new task is a module here
plus the routes that expose it.

NLI (``app.engine.tasks.nli``) is the one task today. Torch-free: the post-processing works on whatever tensor type
the runner holds (torch on the device, NumPy for ONNX Runtime).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self, TypeVar

import numpy as np
import numpy.typing as npt

from app.engine.tokenization import PairEncoder


class LabelMappingError(ValueError):
    """The checkpoint's id2label cannot be read as the task's labels."""


class DeviceTensor(Protocol):
    """What the head's post-processing uses of a device tensor (a ``torch.Tensor``): no torch import needed here."""

    def float(self) -> Self: ...

    def softmax(self, dim: int) -> Self: ...

    def index_select(self, dim: int, index: Any) -> Self: ...


T = TypeVar("T", bound=DeviceTensor)


@dataclass(frozen=True, slots=True)
class Task:
    """One kind of model the service serves."""

    name: str
    labels: tuple[str, ...]
    """The output columns, in the order the service answers them (a checkpoint's own order is mapped by name)."""
    build_encoder: Callable[[Any, int], PairEncoder] = PairEncoder
    """The encoder of the task's inputs, from the checkpoint's fast tokenizer and the variant's max_seq_len."""

    @property
    def width(self) -> int:
        return len(self.labels)

    def label_order(self, id2label: Mapping[int | str, str]) -> tuple[int, ...]:
        """``order`` with ``order[i]`` = the checkpoint's output index of ``labels[i]``, matched by name (any case):
        public checkpoints disagree on the order of the same labels, so guessing by index silently swaps answers."""
        by_name: dict[str, int] = {}
        for raw_index, raw_name in id2label.items():
            name = str(raw_name).strip().lower()
            if name in by_name:
                raise LabelMappingError(f"label {raw_name!r} appears twice in id2label {dict(id2label)!r}")
            by_name[name] = int(raw_index)
        unknown = sorted(set(by_name) - set(self.labels))
        missing = [label for label in self.labels if label not in by_name]
        if unknown or missing or len(by_name) != self.width:
            raise LabelMappingError(
                f"id2label {dict(id2label)!r} must name exactly {', '.join(self.labels)} (any case); "
                f"missing {missing or 'none'}, unexpected {unknown or 'none'}. "
                "Set config.json's id2label/label2id to the names the checkpoint was trained with."
            )
        indices = sorted(by_name.values())
        if indices != list(range(self.width)):
            raise LabelMappingError(f"id2label indices must be 0..{self.width - 1}, got {indices}")
        return tuple(by_name[label] for label in self.labels)

    def output_order(self, order: Sequence[int]) -> tuple[int, ...]:
        """issue #26: the column order of the runner's rows for ``scores``, from ``label_order``'s: the softmax's
        columns, then the logits' (``width`` further on), each reordered alike."""
        return (*order, *(self.width + index for index in order))

    def scores(self, logits: T, order: Any, concat: Callable[[tuple[T, T], int], T]) -> T:
        """The head's logits (rows of one batch, on the device) to the runner's output rows, ``[probabilities |
        logits]``, both in the service's label order: a float32 softmax beside the float32 logits (``concat`` is the
        tensor library's, ``torch.cat``), the columns reordered by ``order`` (a device index tensor from
        ``output_order``). The logits are for zero-shot classification (issue #26), which softmaxes entailment logits
        across rows; one concatenation and one reorder cost about 1.5 us a batch on CPU over the softmax alone."""
        logits = logits.float()
        return concat((logits.softmax(dim=-1), logits), 1).index_select(1, order)

    def scores_numpy(self, logits: npt.NDArray[Any], order: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """``scores`` for a runner that answers NumPy logits (ONNX Runtime)."""
        raw = np.asarray(logits, dtype=np.float32)
        shifted = raw - raw.max(axis=1, keepdims=True)
        exponentials = np.exp(shifted)
        probabilities = (exponentials / exponentials.sum(axis=1, keepdims=True))[:, order]
        outputs: npt.NDArray[np.float32] = np.concatenate([probabilities, raw[:, order]], axis=1)  # issue #26
        return outputs

    def rows(self, scores: npt.NDArray[np.float32], truncated: Sequence[bool]) -> list[dict[str, Any]]:
        """The native API's answer per input: the top label, every label's score, whether the input was cut."""
        top = np.argmax(scores, axis=1).tolist()
        labels = self.labels
        return [
            {"label": labels[best], "scores": dict(zip(labels, row, strict=True)), "truncated": cut}
            for best, row, cut in zip(top, scores.tolist(), truncated, strict=True)
        ]
