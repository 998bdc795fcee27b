"""Padding, the batcher's and the runners' one rule, and the torch-free modules that use it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from app.engine.scheduler.padding import collate, padded_length


@pytest.mark.parametrize(("longest", "padded"), [(1, 8), (8, 8), (9, 16), (255, 256), (256, 256)])
def test_padded_length_rounds_up_to_the_multiple(longest: int, padded: int) -> None:
    assert padded_length(longest) == padded


def test_collate_right_pads_and_masks() -> None:
    input_ids, mask = collate([[5, 6, 7], [9]], pad_token_id=1)
    assert input_ids.tolist() == [[5, 6, 7, 1, 1, 1, 1, 1], [9, 1, 1, 1, 1, 1, 1, 1]]
    assert mask.tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]]
    assert input_ids.dtype == mask.dtype == np.int64


def test_catalogue_batching_the_backend_registry_and_the_stages_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import app.engine.backends, app.engine.scheduler.batching, app.engine.models.catalogue\n"
        "import app.engine.scheduler.runner, app.engine.scheduler.stages\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'onnxruntime')))\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert completed.stdout.strip() == "[]"
