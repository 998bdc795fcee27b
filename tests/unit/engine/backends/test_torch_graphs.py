"""Graph variants of the torch backend: the catalogue's and the loader's refusals, ``graph = "compile"`` answering as
eager does, paced yield points and scoped compile settings (bucket planning: test_torch_buckets.py). CUDA graphs need a
GPU: their capture is exercised by gpu_check.sh."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch

from app import metrics
from app.engine.backends import get_backend
from app.engine.backends.preparation import prepare_variant
from app.engine.backends.torch import TorchRunner
from app.engine.backends.torch_graphs import (
    BucketRunner,
    compile_settings,
)
from app.engine.models.catalogue import CatalogueError, VariantSpec, load_catalogue
from app.engine.models.store import CheckpointError, inspect_checkpoint
from app.engine.scheduler.runner import PreemptibleRunner, WarmableRunner
from app.engine.scheduler.stages import PacedYieldPoint, own_stages

TORCH = get_backend("torch")


def spec(path: Path, **options: object) -> VariantSpec:
    return VariantSpec.model_validate({"name": "probe", "path": path, **options})


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"graph": "cuda-graphs", "device": "cpu"}, "graph 'cuda-graphs' runs on CUDA only"),
        ({"graph": "tensorrt"}, "graph 'tensorrt' is offered by no backend; offered: eager, compile, cuda-graphs"),
        ({"graph": "compile", "backend": "onnxruntime"}, "graph 'compile' needs backend = 'torch'"),
        ({"graph": "compile", "graph_buckets": 0}, "graph_buckets: Input should be greater than or equal to 1"),
    ],
)
def test_the_catalogue_refuses_graphs_it_cannot_serve(tmp_path: Path, options: dict[str, object], problem: str) -> None:
    lines = ["[[variant]]", 'name = "probe"', 'path = "probe"']
    lines += [f"{key} = {value!r}".replace("'", '"') for key, value in options.items()]
    catalogue = tmp_path / "variants.toml"
    catalogue.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(CatalogueError, match=f"variant 'probe': .*{problem}"):
        load_catalogue(catalogue)


@pytest.mark.parametrize("graph", ["eager", "compile", "cuda-graphs"])
def test_the_catalogue_accepts_graphs_on_a_device_that_may_be_a_gpu(tmp_path: Path, graph: str) -> None:
    catalogue = tmp_path / "variants.toml"
    catalogue.write_text(f'[[variant]]\nname = "probe"\npath = "probe"\ngraph = "{graph}"\n', encoding="utf-8")
    assert load_catalogue(catalogue).get("probe").graph == graph


def test_cuda_graphs_without_a_gpu_are_a_load_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CheckpointError, match=r"variant 'probe': graph 'cuda-graphs' needs a CUDA device .* on cpu"):
        TORCH.resolve_device(spec(tmp_path, graph="cuda-graphs"))


def test_cuda_graphs_with_a_gpu_choose_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert TORCH.resolve_device(spec(tmp_path, graph="cuda-graphs")) == torch.device("cuda")


def test_a_bucket_runner_refuses_cuda_graphs_on_the_cpu() -> None:
    eager = TorchRunner(torch.nn.Identity(), torch.device("cpu"), 1, (0, 1, 2))
    with pytest.raises(ValueError, match="graph 'cuda-graphs' needs a CUDA device"):
        BucketRunner(eager, "cuda-graphs", [(1, 16)], "probe")


def eager_count(reason: str) -> float:
    return float(metrics.GRAPH_EAGER_BATCHES.labels("probe", reason)._value.get())


@pytest.fixture(scope="module")
def runners(demo_store: Path) -> tuple[TorchRunner, BucketRunner]:
    """The same tiny checkpoint run eagerly and compiled over three buckets: (1, 16), (2, 16) and (1, 128)."""
    limits = {"device": "cpu", "max_batch_size": 2, "max_batch_tokens": 256, "max_seq_len": 128, "graph_buckets": 3}
    built = [
        prepare_variant(inspect_checkpoint(spec(demo_store / "xlmr-mnli", graph=graph, **limits)), threads=2)
        for graph in ("eager", "compile")
    ]
    eager, compiled = built[0].runner, built[1].runner
    assert isinstance(eager, TorchRunner)
    assert isinstance(compiled, BucketRunner)
    assert built[1].execution["graph"]["buckets"] == [[1, 16], [2, 16], [1, 128]]
    assert built[1].execution["graph"]["build_seconds"] > 0  # built while loading: before the variant can be ready
    return eager, compiled


def sequences(lengths: list[int], seed: int = 0) -> list[list[int]]:
    """Token rows of exactly these lengths (<s> ... </s>)."""
    rng = np.random.default_rng(seed)
    return [[0, *rng.integers(5, 1000, size=length - 2).tolist(), 2] for length in lengths]


def assert_answers_agree(actual: np.ndarray, expected: np.ndarray) -> None:
    """Rows are probabilities then logits (issue #26): probabilities within 1e-5 as before; the logits, unbounded
    (|x| up to ~4 here), may differ by more in absolute terms (1.07e-5 at 0.59 was seen), so within 5e-5."""
    width = actual.shape[1] // 2
    np.testing.assert_allclose(actual[:, :width], expected[:, :width], atol=1e-5)
    np.testing.assert_allclose(actual[:, width:], expected[:, width:], atol=5e-5)


@pytest.mark.slow
@pytest.mark.parametrize("lengths", [[4], [16], [11, 16], [16, 16], [100], [10, 100], [12, 70, 9]])
def test_compiled_buckets_answer_as_eager_does(runners: tuple[TorchRunner, BucketRunner], lengths: list[int]) -> None:
    eager, compiled = runners
    batch = sequences(lengths, seed=sum(lengths))
    before = eager_count("no_bucket")
    with torch.compiler.set_stance("fail_on_recompile"):  # every bucket was compiled at build
        assert_answers_agree(compiled.forward(batch), eager.forward(batch))
        staged = compiled.launch(compiled.prepare(batch)).collect()[0]
    assert_answers_agree(staged, eager.forward(batch))
    assert eager_count("no_bucket") == before


@pytest.mark.slow
@pytest.mark.parametrize("lengths", [[40, 40, 40], [200]])
def test_batches_that_fit_no_bucket_run_eagerly_and_are_counted(
    runners: tuple[TorchRunner, BucketRunner], lengths: list[int]
) -> None:
    eager, compiled = runners
    batch = sequences(lengths, seed=7)
    before = eager_count("no_bucket")
    np.testing.assert_array_equal(compiled.forward(batch), eager.forward(batch))
    assert eager_count("no_bucket") == before + 1


@pytest.mark.slow
@pytest.mark.parametrize("lengths", [[12], [9, 14]])
def test_preemptible_batches_run_eagerly_and_pause_between_blocks(
    runners: tuple[TorchRunner, BucketRunner], lengths: list[int]
) -> None:
    eager, compiled = runners
    interfaces: tuple[PreemptibleRunner, WarmableRunner] = (compiled, compiled)  # what the engine asks (mypy)
    assert interfaces[0] is compiled
    assert own_stages(compiled) is compiled  # the device worker runs it in its own stages
    assert compiled.preemptible
    batch = sequences(lengths)
    pauses: list[int] = []
    before = eager_count("preemptible")
    result = compiled.forward_preemptible(batch, lambda: pauses.append(1))
    np.testing.assert_array_equal(result, eager.forward(batch))
    assert len(pauses) == 3 * 2  # attention, feed-forward in and out of both layers of the tiny encoder
    assert eager_count("preemptible") == before + 1
    staged_pauses: list[int] = []
    staged = compiled.launch(compiled.prepare(batch), lambda: staged_pauses.append(1)).collect()[0]
    np.testing.assert_array_equal(staged, result)
    assert len(staged_pauses) == len(pauses)


@pytest.mark.slow
def test_warm_up_runs_through_the_buckets(runners: tuple[TorchRunner, BucketRunner]) -> None:
    _, compiled = runners
    before = eager_count("no_bucket")
    with torch.compiler.set_stance("fail_on_recompile"):
        compiled.warm_up(2, 16)
        compiled.warm_up(1, 128)
        compiled.warm_up(1, 8)
    assert eager_count("no_bucket") == before


def test_preemptible_batches_on_cuda_pause_at_paced_yield_points() -> None:
    """On CUDA the hooks fire as blocks are queued: the eager pass gets a yield point that waits for the device."""
    handed: list[object] = []

    class Eager:
        model = torch.nn.Identity()
        device = torch.device("cuda:0")
        pad_token_id = 1

        def forward_tensors_preemptible(self, ids: object, mask: object, yield_point: object) -> np.ndarray:
            handed.append(yield_point)
            return np.zeros((1, 6), dtype=np.float32)  # [probabilities | logits] (issue #26)

    runner = BucketRunner(Eager(), "compile", [(1, 16)], "probe")  # type: ignore[arg-type]
    batch = runner.prepare([[0, 5, 2]])
    runner.launch(batch, lambda: None).collect()
    assert isinstance(handed[0], PacedYieldPoint)


@pytest.mark.parametrize("fails", [False, True])
def test_compile_settings_are_put_back_after_a_build(fails: bool) -> None:
    dynamo = torch._dynamo.config
    before = dynamo.recompile_limit, dynamo.accumulated_recompile_limit
    with pytest.raises(RuntimeError) if fails else contextlib.nullcontext(), compile_settings(5):
        assert dynamo.recompile_limit >= before[0] + 5  # and every bucket compiled before, same code object
        assert dynamo.accumulated_recompile_limit >= before[1] + 5
        if fails:
            raise RuntimeError("the build failed")
    assert (dynamo.recompile_limit, dynamo.accumulated_recompile_limit) == before
