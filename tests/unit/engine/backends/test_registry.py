"""The plug-in seam: a backend declared in one module (here, this test) and registered is accepted by the catalogue,
built by the loader and guarded against torch float32, with no other file changed; the built-in declarations."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from app.engine import backends
from app.engine.backends import Backend, BackendSource, LoadedRunner, VariantOptions
from app.engine.backends.torch import TorchRunner
from app.engine.backends.torch_stages import TorchStages
from app.engine.engine import Engine, VariantStatus
from app.engine.models.catalogue import CatalogueError, load_catalogue
from app.engine.models.store import CheckpointError
from app.engine.scheduler.runner import BatchRunner
from app.engine.scheduler.stages import Stages, WholeForward
from app.samples import sample_pairs
from tests.support.helpers import write_catalogue


class CountingRunner:
    """Runs the float32 source model it was given; ``rotate`` turns its answers into wrong labels."""

    def __init__(self, inner: TorchRunner, rotate: bool) -> None:
        self.inner = inner
        self.rotate = rotate
        self.pairs = 0

    def forward(self, sequences: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        self.pairs += len(sequences)
        probabilities = self.inner.forward(sequences)
        return np.roll(probabilities, 1, axis=1) if self.rotate else probabilities

    def warm_up(self, rows: int, width: int) -> None:
        self.inner.warm_up(rows, width)


class FakeBackend(Backend):
    name = "fake"
    platform = "fake_platform"
    quantizations = ("none", "rotated")
    device_types = ("cpu",)
    precision_note = "runs float32 only"

    def __init__(self) -> None:
        self.loaded: list[CountingRunner] = []
        self.staged = 0  # batches the device worker split through this backend's stages hook

    def stages(self, runner: BatchRunner, copy_stream: torch.cuda.Stream | None = None) -> Stages:
        self.staged += 1
        return WholeForward(runner)

    def resolve_device(self, spec: VariantOptions) -> torch.device:
        return torch.device("cpu")

    def resolve_dtype(self, spec: VariantOptions, device: torch.device) -> torch.dtype:
        return torch.float32

    def load(self, source: BackendSource) -> LoadedRunner:
        info = source.info
        inner = TorchRunner(source.model, info.device, info.pad_token_id, info.label_permutation)
        runner = CountingRunner(inner, rotate=info.spec.quantization == "rotated")
        self.loaded.append(runner)
        return LoadedRunner(runner, {"fake": True})


@pytest.fixture
def fake() -> Iterator[FakeBackend]:
    backend = FakeBackend()
    backends.register(backend)
    yield backend
    backends.unregister(backend.name)


def catalogue(tmp_path: Path, demo_store: Path, **variant: object) -> Path:
    return write_catalogue(tmp_path / "variants.toml", demo_store, [{"name": "plugged", **variant}])


def test_an_unregistered_backend_is_refused(tmp_path: Path, demo_store: Path) -> None:
    with pytest.raises(CatalogueError, match=r"variant 'plugged': backend: .*unknown backend 'fake'"):
        load_catalogue(catalogue(tmp_path, demo_store, backend="fake"))


@pytest.mark.usefixtures("fake")
@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"quantization": "rotated"}, None),
        ({"quantization": "int8-dynamic"}, "quantization 'int8-dynamic' needs backend = 'onnxruntime'"),
        ({"dtype": "float16"}, "backend 'fake' runs float32 only; dtype 'float16' is offered by backend 'torch'"),
        ({"device": "cuda:0"}, "backend 'fake' runs on cpu only"),
    ],
)
def test_the_catalogue_judges_a_registered_backend_by_its_declarations(
    tmp_path: Path, demo_store: Path, options: dict[str, str], expected: str | None
) -> None:
    path = catalogue(tmp_path, demo_store, backend="fake", **options)
    if expected is None:
        assert load_catalogue(path).get("plugged").quantization == "rotated"
    else:
        with pytest.raises(CatalogueError, match=expected):
            load_catalogue(path)


def test_a_quantization_only_the_plugin_offers_is_refused_for_torch(
    fake: FakeBackend, tmp_path: Path, demo_store: Path
) -> None:
    with pytest.raises(CatalogueError, match="quantization 'rotated' needs backend = 'fake'"):
        load_catalogue(catalogue(tmp_path, demo_store, quantization="rotated"))


async def test_the_loader_serves_through_a_registered_backend(
    fake: FakeBackend, tmp_path: Path, demo_store: Path
) -> None:
    engine = Engine(load_catalogue(catalogue(tmp_path, demo_store, backend="fake")), tokenization_workers=1)
    try:
        await asyncio.to_thread(engine.load)
        described = engine.variants["plugged"].describe()
        assert (described["status"], described["backend"], described["execution"]) == ("ready", "fake", {"fake": True})
        assert described["accuracy_guard"]["status"] == "passed"  # checked against torch float32, and it agreed
        (runner,) = fake.loaded
        before = runner.pairs
        pairs = [(premise, hypothesis) for _, premise, hypothesis, _ in sample_pairs()][:3]
        result = await engine.predict(pairs, "plugged")
        assert result.probabilities.shape == (3, 3)
        assert runner.pairs == before + 3
        assert fake.staged >= 1  # the worker ran the batch as the backend split it
    finally:
        engine.close()


def test_the_guard_refuses_a_registered_backend_that_answers_wrongly(
    fake: FakeBackend, tmp_path: Path, demo_store: Path
) -> None:
    engine = Engine(load_catalogue(catalogue(tmp_path, demo_store, backend="fake", quantization="rotated")))
    try:
        with pytest.raises(CheckpointError, match="accuracy guard failed against torch float32 on cpu"):
            engine.load()
        assert engine.variants["plugged"].status is VariantStatus.FAILED
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("name", "platform", "quantizations"),
    [("torch", "pytorch_transformers", ("none",)), ("onnxruntime", "onnxruntime_onnx", ("none", "int8-dynamic"))],
)
def test_built_in_backends_declare_their_platform_and_options(
    name: str, platform: str, quantizations: tuple[str, ...]
) -> None:
    backend = backends.get_backend(name)
    assert (backend.name, backend.platform, backend.quantizations) == (name, platform, quantizations)
    assert name in backends.backend_names()


def test_registering_a_second_backend_under_a_taken_name_is_refused(fake: FakeBackend) -> None:
    with pytest.raises(ValueError, match="a backend named 'fake' is registered already"):
        backends.register(FakeBackend())


def test_torch_stages_its_runners_and_leaves_other_runners_whole() -> None:
    torch_backend = backends.get_backend("torch")
    runner = TorchRunner(torch.nn.Identity(), torch.device("cpu"), 1, (0, 1, 2))
    assert isinstance(torch_backend.stages(runner), TorchStages)
    wrapped = CountingRunner(runner, rotate=False)  # a runner the torch backend did not build (faults wrap so)
    assert isinstance(torch_backend.stages(wrapped), WholeForward)
    assert isinstance(backends.get_backend("onnxruntime").stages(wrapped), WholeForward)
