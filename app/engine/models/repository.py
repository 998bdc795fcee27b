"""The model repository: the index of every variant the engine knows or the catalogue file names, and loading,
reloading and unloading variants while the engine serves (the Open Inference Protocol's repository extension).

A load prepares the new version in a thread beside the one serving, then switches to it at once; an unload (or the
old version after a switch) stops admitting, lets accepted requests finish and frees its memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from app import metrics
from app.engine.backends.preparation import release_freed_memory
from app.engine.errors import DrainingError, RepositoryBusyError, UnknownVariantError, VariantLoadError
from app.engine.gate import RequestGate
from app.engine.models.catalogue import Catalogue, CatalogueError, VariantSpec, load_catalogue
from app.engine.models.loading import DeviceWorkers, check_faults, free_memory, load_runtime, release_export
from app.engine.models.store import CheckpointError, inspect_checkpoint
from app.engine.status import RepositoryEntry, RepositoryState, VariantRuntime, VariantStatus

log = logging.getLogger(__name__)


class ModelRepository:
    """The variants the engine serves and every change to them: start-up loading, then loads, reloads and unloads
    while serving. ``variants`` is the table the engine's RequestGate resolves requests against: a switch replaces
    one entry in it, so every request resolved from that moment on runs the new version."""

    def __init__(
        self,
        catalogue: Catalogue,
        variants: dict[str, VariantRuntime],
        gate: RequestGate[VariantRuntime],
        devices: DeviceWorkers,
        *,
        torch_threads: int | None = None,
        allow_faults: bool = False,
        export_cache_dir: Path | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.variants = variants
        self.allow_faults = allow_faults
        self.export_cache_dir = export_cache_dir
        self.started = False  # start-up loading finished (or failed): loads and unloads may change variants
        self._gate = gate  # draining, the default variant and the split, read when a change is asked for
        self._devices = devices
        self._torch_threads = torch_threads
        self._loading: set[str] = set()
        self._unloading: set[str] = set()
        self._load_failures: dict[str, str] = {}  # the last failed repository load of a name, until one succeeds
        self._tasks: set[asyncio.Task[Any]] = set()

    def preflight(self) -> None:
        """Check every enabled variant's checkpoint without loading weights; raises the first CheckpointError."""
        for runtime in self.variants.values():
            if runtime.spec.enabled:
                check_faults(runtime.spec, self.allow_faults)
                runtime.info = inspect_checkpoint(runtime.spec)

    def load_enabled(self) -> None:
        """Start-up: load, warm up and start serving every enabled variant (blocking); changes are refused until
        this has finished, however it ends."""
        try:
            for runtime in self.variants.values():
                if runtime.spec.enabled:
                    load_runtime(runtime, self._devices, self._torch_threads, self.export_cache_dir)
        finally:
            self.started = True

    def catalogue_entry(self, name: str) -> VariantSpec:
        """``name``'s entry as the catalogue file says now (it may have been edited since start-up), enabled.

        Raises CatalogueError when the file cannot be used, UnknownVariantError when it has no such entry.
        """
        catalogue = load_catalogue(self.catalogue.source)
        try:
            spec = catalogue.get(name)
        except KeyError:
            raise UnknownVariantError(name, [variant.name for variant in catalogue.variants]) from None
        return spec.model_copy(update={"enabled": True})  # an explicit load serves it, whatever `enabled` says

    def index(self) -> list[RepositoryEntry]:
        """Every variant the engine knows and every entry of the catalogue file, with its state and why."""
        names = list(dict.fromkeys([*self.variants, *self._loading, *self._load_failures]))
        try:
            names += [spec.name for spec in load_catalogue(self.catalogue.source).variants if spec.name not in names]
        except CatalogueError as error:
            log.warning("repository index lists loaded variants only: %s", error)
        return [self.entry(name) for name in names]

    def entry(self, name: str) -> RepositoryEntry:
        runtime = self.variants.get(name)
        failure = self._load_failures.get(name)
        serving = runtime is not None and runtime.spec.enabled and runtime.status is VariantStatus.READY
        if serving:
            notes = ["a new version is loading"] if name in self._loading else []
            notes += [f"the last load failed, this version still serves: {failure}"] if failure else []
            return RepositoryEntry(name, RepositoryState.READY, "; ".join(notes))
        if name in self._loading:
            return RepositoryEntry(name, RepositoryState.LOADING, "loading")
        if name in self._unloading:
            return RepositoryEntry(name, RepositoryState.UNAVAILABLE, "unloading: accepted requests are finishing")
        if failure:
            return RepositoryEntry(name, RepositoryState.UNAVAILABLE, f"the last load failed: {failure}")
        if runtime is None:
            return RepositoryEntry(name, RepositoryState.UNAVAILABLE, "in the catalogue, not loaded")
        status = runtime.status
        if status in (VariantStatus.PENDING, VariantStatus.LOADING, VariantStatus.WARMING_UP):
            return RepositoryEntry(name, RepositoryState.LOADING, str(status))
        reasons = {
            VariantStatus.FAILED: f"loading failed: {runtime.error}",
            VariantStatus.DISABLED: "disabled in the catalogue, not loaded",
            VariantStatus.UNLOADED: "unloaded",
        }
        return RepositoryEntry(name, RepositoryState.UNAVAILABLE, reasons.get(status, str(status)))

    def _claim(self, name: str) -> None:
        """Refuse a repository change that would race another one (or start-up, or shutdown)."""
        if self._gate.draining:
            raise DrainingError("the service is shutting down and changes no variant")
        if not self.started:
            raise RepositoryBusyError("start-up is still loading the catalogue's variants; try again when it is ready")
        if name in self._loading or name in self._unloading:
            doing = "loaded" if name in self._loading else "unloaded"
            raise RepositoryBusyError(f"variant {name!r} is being {doing} already; try again when that has finished")

    async def _run_to_completion(self, work: Any) -> Any:
        """Run a repository change as its own task: a caller that goes away does not leave it half done."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    async def load_variant(self, name: str, *, min_queue_pairs: int = 1) -> VariantRuntime:
        """Load (or reload) ``name`` from its catalogue entry as the file says now, then serve it.

        The new version is loaded, guarded and warmed up in a thread while the old one (if any) serves; then every
        request resolved from that moment on goes to the new version, and the old one finishes what it accepted and
        is freed. ``min_queue_pairs``: the largest request the API accepts, which the variant's queue must hold.
        A failure raises VariantLoadError (or UnknownVariantError) and leaves what served before serving.
        """
        self._claim(name)
        self._loading.add(name)
        return await self._run_to_completion(self._load_and_switch(name, min_queue_pairs))  # type: ignore[no-any-return]

    async def _load_and_switch(self, name: str, min_queue_pairs: int) -> VariantRuntime:
        try:
            try:
                runtime = await asyncio.to_thread(self._prepare_runtime, name, min_queue_pairs)
            except (CatalogueError, CheckpointError) as error:
                self._load_failures[name] = str(error)
                unexpected = error.__cause__ is not None and not isinstance(error.__cause__, CheckpointError)
                log.error("loading variant %s failed, nothing changed: %s", name, error)
                await asyncio.to_thread(release_freed_memory)
                raise VariantLoadError(name, str(error), server_fault=unexpected) from error
            old = self.variants.get(name)
            self.variants[name] = runtime  # the switch: requests resolved from now on run the new version
            self._load_failures.pop(name, None)
            log.info("variant %s now serves %s", name, runtime.spec.path)
            if old is not None:
                await self._retire(old, keep_labels=runtime.info_labels)
            return runtime
        finally:
            self._loading.discard(name)

    def _prepare_runtime(self, name: str, min_queue_pairs: int) -> VariantRuntime:
        """Runs in a thread: a complete new runtime, queued on its device but not yet reachable by requests."""
        spec = self.catalogue_entry(name)
        if spec.max_queue_pairs < min_queue_pairs:
            raise CheckpointError(
                name,
                f"max_queue_pairs={spec.max_queue_pairs} is below max_pairs_per_request={min_queue_pairs}: "
                "requests the API accepts would never fit its queue",
            )
        check_faults(spec, self.allow_faults)
        runtime = VariantRuntime(spec)
        load_runtime(runtime, self._devices, self._torch_threads, self.export_cache_dir)
        return runtime

    async def unload_variant(self, name: str) -> None:
        """Stop admitting requests for ``name``, let those accepted finish, then free its memory.

        Unloading a catalogue entry that is not loaded does nothing; a name neither loaded nor in the catalogue
        raises UnknownVariantError.
        """
        runtime = self.variants.get(name)
        if runtime is None or not runtime.spec.enabled:  # not loaded (disabled, unloaded, or never loaded)
            if name in self._loading:
                self._claim(name)  # raises: a load of it is running
            if runtime is None:
                self.catalogue_entry(name)  # raises UnknownVariantError unless the catalogue names it
            return
        self._claim(name)
        self._refuse_unloading_the_fallback(name)
        self._unloading.add(name)
        await self._run_to_completion(self._unload(name, runtime))

    def _refuse_unloading_the_fallback(self, name: str) -> None:
        """The default variant answers every request that names none unless a traffic split chooses for them; with
        it unloaded each of those would get 404 while the service still reads as ready."""
        if name == self._gate.default_variant and not self._gate.router.splits:
            raise RepositoryBusyError(
                f"variant {name!r} is the default variant: requests that name no variant fall back to it and no "
                "[traffic] split covers them, so it stays loaded; to unload it, make another variant the catalogue's "
                "default_variant (or add a [traffic] split) and restart"
            )

    async def _unload(self, name: str, runtime: VariantRuntime) -> None:
        try:
            self.variants[name] = VariantRuntime(
                runtime.spec.model_copy(update={"enabled": False}), status=VariantStatus.UNLOADED
            )
            self._load_failures.pop(name, None)
            await self._retire(runtime, keep_labels=None)
            for gauge in (metrics.QUEUE_DEPTH, metrics.SHADOW_QUEUE_DEPTH):  # gauges of a variant that is gone
                with contextlib.suppress(KeyError):  # (counters keep their history)
                    gauge.remove(name)
            log.info("variant %s unloaded", name)
        finally:
            self._unloading.discard(name)

    async def _retire(self, runtime: VariantRuntime, keep_labels: tuple[str, ...] | None) -> None:
        """Stop a runtime that requests can no longer resolve to: wait for the requests it accepted (each is bounded
        by its deadline), take its queue off the device, drop its labels and free its model."""
        runtime.status = VariantStatus.UNLOADING
        runtime.drained = asyncio.Event()
        if runtime.active:
            try:
                async with asyncio.timeout(self._gate.request_timeout_s + 5.0):  # every request ends by its deadline
                    await runtime.drained.wait()
            except TimeoutError:
                log.warning("variant %s: %d requests still inside after the drain", runtime.spec.name, runtime.active)
        if runtime.worker is not None and runtime.queue is not None:
            runtime.worker.remove_queue(runtime.queue, "unloaded" if keep_labels is None else "replaced")
        if runtime.info_labels is not None and runtime.info_labels != keep_labels:
            metrics.VARIANT_INFO.remove(*runtime.info_labels)
        runtime.status = VariantStatus.UNLOADED
        runtime.info_labels = None
        if not runtime.active:  # nothing uses it any more: let go of the model, its runner and tokenizer
            runtime.queue = None
            runtime.worker = None
            runtime.encoder = None
            runtime.info = None
        release_export(runtime.execution)
        await asyncio.to_thread(free_memory)
