"""tritonclient inputs for the two text tensors, shared by the binary tensor and model repository tests."""

from __future__ import annotations

import numpy as np
import tritonclient.http as triton


def triton_inputs(pairs: list[tuple[str, str]], binary: bool = True) -> list[triton.InferInput]:
    """``premise`` and ``hypothesis`` as tritonclient builds them; ``binary=True`` is its default (binary data)."""
    inputs = []
    for position, name in enumerate(("premise", "hypothesis")):
        tensor = triton.InferInput(name, [len(pairs)], "BYTES")
        tensor.set_data_from_numpy(np.array([pair[position] for pair in pairs], dtype=object), binary_data=binary)
        inputs.append(tensor)
    return inputs
