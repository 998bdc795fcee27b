"""ONNX Runtime backend: runner equivalence with torch, the accuracy guard on a corrupted export, device choice."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from app.engine.backends import get_backend
from app.engine.backends import onnxruntime as onnxruntime_backend
from app.engine.backends.onnx_export import OnnxArtifact
from app.engine.backends.onnxruntime import OnnxRunner, execution_providers
from app.engine.backends.torch import TorchRunner, load_checkpoint
from app.engine.engine import Engine, VariantStatus
from app.engine.models.accuracy_guard import probe_sequences, run_probe
from app.engine.models.catalogue import VariantSpec, load_catalogue
from app.engine.models.export_cache import MANIFEST_FILE
from app.engine.models.store import CheckpointError, inspect_checkpoint
from app.engine.tokenization import PairEncoder
from tests.support.helpers import write_catalogue


def test_onnx_runner_matches_torch_in_the_service_label_order(checkpoint: Path, artifact: OnnxArtifact) -> None:
    spec = load_catalogue(
        write_catalogue(
            checkpoint.parent / "variants.toml", checkpoint.parent, [{"name": "v", "checkpoint": "checkpoint"}]
        )
    ).get("v")
    info = inspect_checkpoint(spec)
    assert info.label_permutation != (0, 1, 2)  # the by-name mapping is exercised
    loaded = load_checkpoint(info)
    encoder = PairEncoder(loaded.backend_tokenizer, spec.max_seq_len)
    probes = probe_sequences(encoder)
    onnx_runner = OnnxRunner(artifact.path, "cpu", 1, loaded.pad_token_id, info.label_permutation)
    torch_runner = TorchRunner(loaded.model, info.device, loaded.pad_token_id, info.label_permutation)
    expected = run_probe(torch_runner, probes)
    got = run_probe(onnx_runner, probes)
    assert got.shape == (len(probes), 3)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert len(set(expected.argmax(axis=1).tolist())) == 3  # the demo head answers every label, not one


def corrupt_label_rows(model_path: Path) -> None:
    """An export whose classifier rows are rotated: a wrong graph that still loads and runs, published with a
    manifest that matches it (as a faulty exporter would have written it)."""
    model = onnx.load(str(model_path))
    for initializer in model.graph.initializer:
        if initializer.name == "classifier.out_proj.weight":
            weights = numpy_helper.to_array(initializer)
            rotated = np.roll(weights, 1, axis=0 if weights.shape[0] == 3 else 1)
            initializer.CopyFrom(numpy_helper.from_array(rotated, initializer.name))
            break
    else:
        raise AssertionError("no classifier weight in the export")
    onnx.save_model(model, str(model_path), save_as_external_data=True, location=model_path.name + ".data")
    refresh_manifest(model_path)


def refresh_manifest(model_path: Path) -> None:
    manifest_path = model_path.parent / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["files"] = {name: (model_path.parent / name).stat().st_size for name in manifest["files"]}
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")


@pytest.mark.parametrize(
    ("guard", "outcome"),
    [pytest.param(True, "refused", id="guard-on"), pytest.param(False, "served", id="guard-off")],
)
def test_accuracy_guard_refuses_a_corrupted_export(
    checkpoint: Path, artifact: OnnxArtifact, guard: bool, outcome: str
) -> None:
    corrupt_label_rows(artifact.path)
    catalogue = write_catalogue(
        checkpoint.parent / "variants.toml",
        checkpoint.parent,
        [{"name": "broken-onnx", "checkpoint": "checkpoint", "backend": "onnxruntime", "accuracy_guard": guard}],
    )
    engine = Engine(load_catalogue(catalogue), tokenization_workers=1, torch_threads=1)
    load: Callable[[], None] = engine.load
    try:
        if outcome == "refused":
            with pytest.raises(CheckpointError, match="accuracy guard failed against torch float32 on cpu") as raised:
                load()
            assert "top-1 agreement" in str(raised.value)
            assert engine.variants["broken-onnx"].status is VariantStatus.FAILED
            assert not engine.live
        else:
            load()
            described = engine.variants["broken-onnx"].describe()
            assert described["accuracy_guard"]["status"] == "disabled"
            assert described["execution"]["export"]["reused"] is True  # the corrupted file was what ran
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("requested", "quantization", "gpu", "provider", "expected"),
    [
        ("auto", "none", True, True, "cuda"),
        ("auto", "none", True, False, "cpu"),  # onnxruntime without its CUDA provider
        ("auto", "none", False, True, "cpu"),
        ("auto", "int8-dynamic", True, True, "cpu"),  # int8 kernels are CPU-only
        ("cuda:0", "none", True, True, "cuda:0"),
        ("cpu", "none", True, True, "cpu"),
    ],
)
def test_device_choice(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    requested: str,
    quantization: str,
    gpu: bool,
    provider: bool,
    expected: str,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1 if gpu else 0)
    monkeypatch.setattr(onnxruntime_backend, "cuda_provider_available", lambda: provider)
    spec = VariantSpec.model_validate(
        {"name": "probe", "path": tmp_path, "backend": "onnxruntime", "device": requested, "quantization": quantization}
    )
    assert get_backend("onnxruntime").resolve_device(spec) == torch.device(expected)


def test_a_gpu_without_the_cuda_provider_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(onnxruntime_backend, "cuda_provider_available", lambda: False)
    spec = VariantSpec.model_validate({"name": "probe", "path": tmp_path, "backend": "onnxruntime", "device": "cuda"})
    with pytest.raises(CheckpointError, match="with backend 'onnxruntime' needs ONNX Runtime's CUDA provider"):
        get_backend("onnxruntime").resolve_device(spec)


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("cpu", ["CPUExecutionProvider"]),
        ("cuda", [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]),
        ("cuda:1", [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]),
    ],
)
def test_execution_providers_keep_the_cpu_as_fallback(device: str, expected: list[object]) -> None:
    assert execution_providers(device) == expected
