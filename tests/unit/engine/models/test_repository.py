"""The engine's model repository: load, reload and unload variants while it serves, in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from app.engine.engine import Engine, RepositoryState, VariantStatus
from app.engine.errors import (
    DrainingError,
    RepositoryBusyError,
    UnknownVariantError,
    VariantLoadError,
    VariantNotReadyError,
)
from app.engine.models import export_cache
from app.engine.models.catalogue import load_catalogue
from tests.support.checkpoint_edits import perturbed_copy, relabelled_copy, shift_classifier_bias
from tests.support.helpers import write_catalogue

PAIRS = [
    ("Der Bäcker öffnet um sechs Uhr morgens.", "Die Bäckerei ist früh geöffnet."),
    ("Ha llovido toda la noche en la ciudad.", "Las calles están secas."),
]


@pytest.fixture
def checkpoint(demo_store: Path, tmp_path: Path) -> Path:
    """A private copy of a demo checkpoint, which a test may change under the running engine."""
    return perturbed_copy(demo_store / "xlmr-mnli", tmp_path / "alpha-checkpoint", (0.0, 0.0, 0.0))


@pytest.fixture
def catalogue(tmp_path: Path, demo_store: Path, checkpoint: Path) -> Path:
    return write_catalogue(tmp_path / "variants.toml", demo_store, [{"name": "alpha", "path": str(checkpoint)}])


@pytest.fixture
async def engine(catalogue: Path) -> AsyncIterator[Engine]:
    instance = Engine(load_catalogue(catalogue), tokenization_workers=1, torch_threads=1, allow_faults=True)
    instance.preflight()
    await asyncio.to_thread(instance.load)
    yield instance
    instance.close()


def edit(catalogue: Path, demo_store: Path, *variants: dict[str, object]) -> None:
    write_catalogue(catalogue, demo_store, list(variants))


def info_series(variant: str) -> list[dict[str, str]]:
    """The xnli_variant_info label sets of ``variant`` that /metrics shows now."""
    return [
        sample.labels
        for family in REGISTRY.collect()
        if family.name == "xnli_variant_info"
        for sample in family.samples
        if sample.labels.get("variant") == variant
    ]


def index(engine: Engine) -> dict[str, tuple[RepositoryState, str]]:
    return {entry.name: (entry.state, entry.reason) for entry in engine.repository_index()}


async def probabilities(engine: Engine, variant: str) -> np.ndarray:
    return (await engine.predict(PAIRS, variant)).probabilities


async def test_a_new_catalogue_entry_is_loaded_while_the_others_serve(
    engine: Engine, catalogue: Path, demo_store: Path, checkpoint: Path
) -> None:
    assert set(index(engine)) == {"alpha"}
    edit(catalogue, demo_store, {"name": "alpha", "path": str(checkpoint)}, {"name": "beta", "dtype": "float32"})
    assert index(engine)["beta"] == (RepositoryState.UNAVAILABLE, "in the catalogue, not loaded")
    with pytest.raises(UnknownVariantError):
        engine.resolve("beta")

    loading = asyncio.ensure_future(engine.load_variant("beta"))
    await asyncio.sleep(0)
    assert index(engine)["beta"] == (RepositoryState.LOADING, "loading")
    with pytest.raises(RepositoryBusyError, match="being loaded already"):
        await engine.unload_variant("beta")
    assert engine.ready
    assert engine.variant_ready("alpha")
    assert not engine.variant_ready("beta")
    await loading

    assert index(engine) == {"alpha": (RepositoryState.READY, ""), "beta": (RepositoryState.READY, "")}
    assert engine.ready
    assert engine.variant_ready("beta")
    assert (await probabilities(engine, "beta")).shape == (len(PAIRS), 3)
    assert len(info_series("beta")) == 1


async def test_reload_serves_the_changed_checkpoint_and_lets_the_old_one_go(engine: Engine, checkpoint: Path) -> None:
    before = await probabilities(engine, "alpha")
    old = engine.variants["alpha"]
    worker = old.worker
    assert worker is not None
    shift_classifier_bias(checkpoint, (3.0, -3.0, 0.0))

    reloaded = await engine.load_variant("alpha")

    after = await probabilities(engine, "alpha")
    assert engine.variants["alpha"] is reloaded
    assert not np.allclose(before, after, atol=1e-3)
    assert old.status is VariantStatus.UNLOADED
    assert old.queue is None
    assert old.encoder is None
    assert [queue.name for queue in worker.queues] == ["alpha"]  # the old queue is off the device
    assert len(info_series("alpha")) == 1
    assert index(engine)["alpha"] == (RepositoryState.READY, "")


def guard_fails(entry: dict[str, Any], store: Path, tmp: Path) -> str:
    entry.update(dtype="bfloat16", max_probability_diff=0.0, min_top1_agreement=1.0)
    return "accuracy guard failed"


def labels_unmappable(entry: dict[str, Any], store: Path, tmp: Path) -> str:
    copy = relabelled_copy(store / "xlmr-mnli", tmp / "relabelled", {"0": "yes", "1": "maybe", "2": "no"})
    entry["path"] = str(copy)
    return "labels cannot be mapped by name"


def folder_missing(entry: dict[str, Any], store: Path, tmp: Path) -> str:
    entry["path"] = str(tmp / "nowhere")
    return "does not exist"


def queue_too_small(entry: dict[str, Any], store: Path, tmp: Path) -> str:
    entry["max_queue_pairs"] = 4
    return "max_queue_pairs=4 is below max_pairs_per_request=64"


@pytest.mark.parametrize(
    "break_entry",
    [guard_fails, labels_unmappable, folder_missing, queue_too_small],
    ids=["accuracy-guard", "unmappable-labels", "missing-folder", "queue-too-small"],
)
async def test_a_failed_reload_leaves_the_previous_version_serving(
    engine: Engine,
    catalogue: Path,
    demo_store: Path,
    checkpoint: Path,
    tmp_path: Path,
    break_entry: Callable[[dict[str, Any], Path, Path], str],
) -> None:
    before = await probabilities(engine, "alpha")
    serving = engine.variants["alpha"]
    entry: dict[str, Any] = {"name": "alpha", "path": str(checkpoint)}
    expected = break_entry(entry, demo_store, tmp_path)
    edit(catalogue, demo_store, entry)

    with pytest.raises(VariantLoadError, match=expected) as failure:
        await engine.load_variant("alpha", min_queue_pairs=64)

    assert not failure.value.server_fault
    assert engine.variants["alpha"] is serving
    assert serving.status is VariantStatus.READY
    np.testing.assert_array_equal(await probabilities(engine, "alpha"), before)
    state, reason = index(engine)["alpha"]
    assert state is RepositoryState.READY
    assert "the last load failed, this version still serves" in reason
    assert expected in reason
    assert engine.ready
    assert len(info_series("alpha")) == 1
    assert serving.worker is not None
    assert [queue.name for queue in serving.worker.queues] == ["alpha"]


async def test_a_failed_first_load_says_why_and_changes_nothing(
    engine: Engine, catalogue: Path, demo_store: Path, checkpoint: Path, tmp_path: Path
) -> None:
    edit(catalogue, demo_store, {"name": "alpha", "path": str(checkpoint)}, {"name": "beta", "path": "/nowhere"})
    with pytest.raises(VariantLoadError, match="does not exist"):
        await engine.load_variant("beta")
    assert index(engine)["beta"][0] is RepositoryState.UNAVAILABLE
    assert "the last load failed" in index(engine)["beta"][1]
    assert "beta" not in engine.variants
    assert engine.ready

    with pytest.raises(UnknownVariantError, match="'gamma'"):
        await engine.load_variant("gamma")
    await asyncio.to_thread(catalogue.write_text, "[[variant]\nname = ", encoding="utf-8")
    with pytest.raises(VariantLoadError, match="not valid TOML"):
        await engine.load_variant("alpha")
    assert set(index(engine)) == {"alpha", "beta"}  # an unreadable file lists what the engine knows
    assert engine.variant_ready("alpha")


async def test_unload_finishes_accepted_work_then_refuses_and_forgets(
    engine: Engine, catalogue: Path, demo_store: Path, checkpoint: Path
) -> None:
    slow: dict[str, object] = {"name": "slow", "faults": {"delay_ms": 300}}
    edit(catalogue, demo_store, {"name": "alpha", "path": str(checkpoint)}, slow)
    await engine.load_variant("slow")
    runtime = engine.variants["slow"]
    worker = runtime.worker
    assert worker is not None
    assert len(info_series("slow")) == 1

    accepted = asyncio.ensure_future(engine.predict(PAIRS, "slow"))
    await asyncio.sleep(0.05)  # admitted and running on the device
    unloading = asyncio.ensure_future(engine.unload_variant("slow"))
    await asyncio.sleep(0.05)
    assert index(engine)["slow"] == (RepositoryState.UNAVAILABLE, "unloading: accepted requests are finishing")
    with pytest.raises(UnknownVariantError):  # new work is refused at once
        await engine.predict(PAIRS, "slow")
    assert not unloading.done()
    assert (await accepted).probabilities.shape == (len(PAIRS), 3)
    await unloading

    assert runtime.status is VariantStatus.UNLOADED
    assert runtime.queue is None
    assert [queue.name for queue in worker.queues] == ["alpha"]
    assert info_series("slow") == []
    assert index(engine)["slow"] == (RepositoryState.UNAVAILABLE, "unloaded")
    assert engine.variants["slow"].describe()["status"] == "unloaded"
    assert engine.ready
    assert not engine.variant_ready("slow")
    await engine.unload_variant("slow")  # unloading what is not loaded does nothing
    with pytest.raises(UnknownVariantError):
        await engine.unload_variant("ghost")
    await engine.load_variant("slow")  # and it can come back
    assert engine.variant_ready("slow")


async def test_the_default_variant_stays_loaded_unless_a_split_covers_it(
    engine: Engine, demo_store: Path, checkpoint: Path, tmp_path: Path
) -> None:
    """Unloaded, the default would turn every request that names no variant into a 404 while readiness said 200."""
    with pytest.raises(RepositoryBusyError, match="'alpha' is the default variant: requests that name no variant"):
        await engine.unload_variant("alpha")
    assert engine.variant_ready("alpha")
    assert index(engine)["alpha"] == (RepositoryState.READY, "")
    assert engine.route(None).spec.name == "alpha"

    split = write_catalogue(
        tmp_path / "split.toml", demo_store, [{"name": "alpha", "path": str(checkpoint)}, {"name": "beta"}]
    )
    split.write_text(split.read_text(encoding="utf-8") + "\n[traffic]\nsplit = { alpha = 1.0, beta = 1.0 }\n")
    covered = Engine(load_catalogue(split), tokenization_workers=1, torch_threads=1)
    covered.preflight()
    await asyncio.to_thread(covered.load)
    try:
        await covered.unload_variant("alpha")  # the split's other variant takes its share
        assert not covered.variant_ready("alpha")
        assert {covered.route(None).spec.name for _ in range(8)} == {"beta"}
    finally:
        covered.close()


async def test_a_retired_queue_admits_nothing(engine: Engine) -> None:
    runtime = engine.variants["alpha"]
    assert runtime.worker is not None
    assert runtime.queue is not None
    runtime.worker.remove_queue(runtime.queue)
    with pytest.raises(VariantNotReadyError, match="unloaded"):
        await engine.predict(PAIRS, "alpha")


async def test_repository_changes_do_not_overlap(engine: Engine) -> None:
    first = asyncio.ensure_future(engine.load_variant("alpha"))
    await asyncio.sleep(0)
    assert index(engine)["alpha"] == (RepositoryState.READY, "a new version is loading")
    with pytest.raises(RepositoryBusyError, match="being loaded already"):
        await engine.load_variant("alpha")
    with pytest.raises(RepositoryBusyError, match="being loaded already"):
        await engine.unload_variant("alpha")
    await first
    engine.begin_drain()
    with pytest.raises(DrainingError):
        await engine.load_variant("alpha")


async def test_nothing_changes_before_start_up_has_loaded(catalogue: Path) -> None:
    fresh = Engine(load_catalogue(catalogue), tokenization_workers=1)
    with pytest.raises(RepositoryBusyError, match="start-up"):
        await fresh.load_variant("alpha")
    fresh.close()


@pytest.mark.slow  # exports an ONNX model: make test-slow
async def test_unloading_an_onnx_variant_releases_its_export(
    engine: Engine, catalogue: Path, demo_store: Path, checkpoint: Path, tmp_path: Path
) -> None:
    onnx = {"name": "onnx", "backend": "onnxruntime", "max_batch_size": 4, "max_seq_len": 128, "max_batch_tokens": 512}
    edit(catalogue, demo_store, {"name": "alpha", "path": str(checkpoint)}, onnx)
    engine.repository.export_cache_dir = tmp_path / "exports"
    await engine.load_variant("onnx")
    export = engine.variants["onnx"].execution["export"]
    folder = Path(export["path"]).parent
    assert folder in export_cache._held  # served: no process may prune it
    await engine.unload_variant("onnx")
    assert folder not in export_cache._held
