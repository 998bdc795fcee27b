"""Graph variants of the torch backend: buckets, padding into them, the catalogue's and the loader's refusals, and
``graph = "compile"`` answering as eager does (CUDA graphs need a GPU: their capture is exercised by gpu_check.sh)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from app import metrics
from app.engine.backends import get_backend
from app.engine.backends.preparation import prepare_variant
from app.engine.backends.torch import TorchRunner
from app.engine.backends.torch_graphs import BucketRunner, bucket_shapes, length_axis, pad_to_bucket, rows_axis
from app.engine.catalogue import CatalogueError, VariantSpec, load_catalogue
from app.engine.model_store import CheckpointError, inspect_checkpoint
from app.engine.padding import padded_length
from app.engine.runner import PreemptibleRunner, WarmableRunner
from app.engine.stages import PacedYieldPoint
from app.engine.torch_stages import stages_for

TORCH = get_backend("torch")
LIMITS = [(32, 8192, 256), (256, 16384, 128), (8, 512, 64), (3, 100, 24), (1, 64, 8)]


def spec(path: Path, **options: object) -> VariantSpec:
    return VariantSpec.model_validate({"name": "probe", "path": path, **options})


def batches(max_batch_size: int, max_batch_tokens: int, max_seq_len: int) -> Iterator[tuple[int, int]]:
    """Every (rows, padded width) the batcher can form under these limits."""
    for width in range(8, padded_length(max_seq_len) + 1, 8):
        for rows in range(1, min(max_batch_size, max_batch_tokens // width) + 1):
            yield rows, width


@pytest.mark.parametrize(("longest", "expected"), [(8, [8]), (16, [16]), (72, [16, 32, 48, 64, 72]), (128, None)])
def test_length_axis_steps_are_at_most_half_a_length(longest: int, expected: list[int] | None) -> None:
    axis = length_axis(longest)
    if expected is not None:
        assert axis == expected
    assert axis[-1] == longest
    assert axis == sorted(set(axis))
    assert all(after - before <= max(16, before // 2) for before, after in itertools.pairwise(axis))


@pytest.mark.parametrize(("most", "expected"), [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]), (32, [1, 2, 4, 8, 16, 32])])
def test_rows_axis_is_powers_of_two_and_the_most(most: int, expected: list[int]) -> None:
    assert rows_axis(most) == expected


@pytest.mark.parametrize("limits", LIMITS)
@pytest.mark.parametrize("count", [256, 24, 8])
def test_buckets_cover_every_batch_the_batcher_forms(limits: tuple[int, int, int], count: int) -> None:
    shapes = bucket_shapes(*limits, count)
    assert 1 <= len(shapes) <= count
    assert shapes == sorted(shapes, key=lambda shape: (shape[0] * shape[1], shape))
    assert shapes[0] == (1, min(16, padded_length(limits[2])))  # single pairs always have the cheapest bucket
    corners = len(length_axis(padded_length(limits[2]))) * len(rows_axis(limits[0]))
    if count >= min(corners, 6):  # room for two lengths by up to three rows: no batch needs to run eagerly
        for rows, width in batches(*limits):
            assert any(r >= rows and length >= width for r, length in shapes), (rows, width)


def test_too_few_buckets_keep_the_smallest() -> None:
    assert bucket_shapes(32, 8192, 256, 2) == [(1, 16), (1, 256)]


def test_padding_into_a_bucket_keeps_the_batch_in_the_corner() -> None:
    ids = np.array([[0, 5, 6, 2], [0, 7, 2, 1]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=np.int64)
    padded_ids, padded_mask = pad_to_bucket(ids, mask, (4, 8), pad_token_id=1)
    assert padded_ids.shape == padded_mask.shape == (4, 8)
    np.testing.assert_array_equal(padded_ids[:2, :4], ids)
    np.testing.assert_array_equal(padded_mask[:2, :4], mask)
    assert (padded_ids[:, 4:] == 1).all()
    assert (padded_mask[:2, 4:] == 0).all()
    # each extra row attends to one pad token: never an empty row, which some attention kernels turn into NaN
    np.testing.assert_array_equal(padded_mask[2:], [[1, 0, 0, 0, 0, 0, 0, 0]] * 2)
    assert (padded_ids[2:] == 1).all()


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


def planned(runner: BucketRunner, lengths: list[int]) -> list[tuple[list[int] | None, tuple[int, int]]]:
    plan = runner.plan(np.array(lengths, dtype=np.int64))
    return [(None if rows is None else rows.tolist(), bucket) for rows, bucket in plan]


def unbuilt(shapes: list[tuple[int, int]]) -> BucketRunner:
    return BucketRunner(TorchRunner(torch.nn.Identity(), torch.device("cpu"), 1, (0, 1, 2)), "compile", shapes, "p")


@pytest.mark.parametrize(
    ("lengths", "expected"),
    [
        ([5], [(None, (1, 16))]),
        ([11, 16], [(None, (2, 16))]),
        ([10, 12], [(None, (2, 16))]),  # two (1, 16) buckets would compute more, not less
        ([100, 10], [([1], (1, 16)), ([0], (1, 128))]),  # fits no bucket whole
        ([12, 70, 9], [([2, 0], (2, 16)), ([1], (1, 128))]),
        ([40, 40, 40], []),  # neither whole nor split: eagerly
        ([200], []),
    ],
)
def test_a_batch_runs_whole_split_by_length_or_eagerly(
    lengths: list[int], expected: list[tuple[list[int] | None, tuple[int, int]]]
) -> None:
    assert planned(unbuilt([(1, 16), (2, 16), (1, 128)]), lengths) == expected


def test_a_few_long_rows_split_off_when_that_saves_a_quarter_of_the_tokens() -> None:
    runner = unbuilt(bucket_shapes(32, 8192, 256, 32))
    assert planned(runner, [40] * 31 + [250]) == [(list(range(31)), (32, 64)), ([31], (1, 256))]
    assert planned(runner, [60] * 15 + [70]) == [(list(range(15)), (16, 64)), ([15], (1, 128))]  # 1152, not 2048
    assert planned(runner, [60] * 8 + [70] * 8) == [(None, (16, 128))]  # a split would save exactly a quarter
    assert planned(runner, [60] * 16) == [(None, (16, 64))]


@pytest.mark.slow
@pytest.mark.parametrize("lengths", [[4], [16], [11, 16], [16, 16], [100], [10, 100], [12, 70, 9]])
def test_compiled_buckets_answer_as_eager_does(runners: tuple[TorchRunner, BucketRunner], lengths: list[int]) -> None:
    eager, compiled = runners
    batch = sequences(lengths, seed=sum(lengths))
    before = eager_count("no_bucket")
    with torch.compiler.set_stance("fail_on_recompile"):  # every bucket was compiled at build
        np.testing.assert_allclose(compiled.forward(batch), eager.forward(batch), atol=1e-5)
        staged = compiled.launch(compiled.prepare(batch)).collect()[0]
    np.testing.assert_allclose(staged, eager.forward(batch), atol=1e-5)
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
    assert stages_for(compiled) is compiled  # the device worker runs it in its own stages
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
            return np.zeros((1, 3), dtype=np.float32)

    runner = BucketRunner(Eager(), "compile", [(1, 16)], "probe")  # type: ignore[arg-type]
    batch = runner.prepare([[0, 5, 2]])
    runner.launch(batch, lambda: None).collect()
    assert isinstance(handed[0], PacedYieldPoint)
