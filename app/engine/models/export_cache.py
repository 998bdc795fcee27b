"""A cache of build artifacts (ONNX exports) that several processes may build, reuse and prune at once, on one
machine or on one volume shared by replicas.

- Builds and prunes of one cache run under an exclusive POSIX record lock (``fcntl.lockf``, which NFS v4 honours too)
  on ``<root>.lock``, so two replicas starting together build an artifact once and the second reuses it.
- An artifact is published by renaming a finished staging folder to ``<root>/<key>``; its manifest lists every file
  with its size and is verified on every reuse, so a half-written or half-deleted folder is never trusted.
- A process that serves an artifact holds a shared lock on its ``.in-use`` file for as long as it runs; pruning
  (which removes artifacts of an older checkpoint or exporter) skips every artifact another process holds, and the
  ones this process holds, and renames a folder away before deleting it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
IN_USE_FILE = ".in-use"

# POSIX record locks belong to the process, not the thread: threads of one process exclude each other here. Two
# locks: builds may hold theirs for a whole export (a minute for large), while holding and releasing an artifact must
# stay instant (it runs on the event loop when a variant is unloaded).
_build_lock = threading.Lock()
_held_lock = threading.Lock()
_held: dict[Path, tuple[int, int]] = {}  # artifact folder -> (descriptor of its share-locked .in-use file, holders)


@dataclass(frozen=True, slots=True)
class CachedArtifact:
    folder: Path
    key: str
    reused: bool
    seconds: float


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a complete artifact: every file it lists is there with the recorded size; else None."""
    try:
        manifest: dict[str, Any] = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        return None
    for name, size in files.items():
        try:
            if (folder / name).stat().st_size != size:
                return None
        except OSError:
            return None
    return manifest


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """Exclusive use of the cache at ``root`` by this thread of this process (blocks while another has it)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock:
        descriptor = os.open(root.parent / f"{root.name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # releases the lock


def hold(folder: Path) -> None:
    """Mark an artifact as used by this process until it exits (or as many ``release`` calls): no process prunes it
    meanwhile."""
    with _held_lock:
        if folder in _held:
            descriptor, holders = _held[folder]
            _held[folder] = (descriptor, holders + 1)
            return
        descriptor = os.open(folder / IN_USE_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.lockf(descriptor, fcntl.LOCK_SH)
        _held[folder] = (descriptor, 1)


def release(folder: Path) -> None:
    with _held_lock:
        if folder not in _held:
            return
        descriptor, holders = _held[folder]
        if holders > 1:
            _held[folder] = (descriptor, holders - 1)
        else:
            del _held[folder]
            os.close(descriptor)


def _used_elsewhere(folder: Path) -> bool:
    """Whether another process holds the artifact (this process must not be asked: its own locks never conflict)."""
    try:
        descriptor = os.open(folder / IN_USE_FILE, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(descriptor)  # also drops the probe's lock
    return False


def _discard(folder: Path) -> None:
    """Rename, then delete: a folder being deleted never sits under a key that a reader would trust."""
    trash = folder.with_name(f".trash-{folder.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(folder, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


LEFTOVER_AGE_S = 3600.0  # a staging or trash folder this old belongs to a process that died mid-build


def _prune(root: Path, keep: str, kind: str) -> None:
    now = time.time()
    for leftover in root.glob(".*"):
        try:
            stale = leftover.is_dir() and now - leftover.stat().st_mtime > LEFTOVER_AGE_S
        except OSError:
            continue
        if stale:
            shutil.rmtree(leftover, ignore_errors=True)
    for folder in root.iterdir():
        if folder.name == keep or folder.name.startswith(".") or not folder.is_dir():
            continue
        manifest = read_manifest(folder)
        if manifest is None or manifest.get("kind") != kind:
            continue
        with _held_lock:
            held_here = folder in _held
        # Never probe an artifact this process holds: closing the probe's descriptor would drop our own lock.
        if held_here or _used_elsewhere(folder):
            log.info("kept stale export %s: another process still serves it", folder)
            continue
        _discard(folder)
        log.info("removed stale export %s", folder)


def build(
    root: Path, key: str, manifest: dict[str, Any], write: Callable[[Path], None], *, keep_held: bool = False
) -> CachedArtifact:
    """The artifact ``root/key``: reused when complete, else written by ``write(staging_folder)`` and published;
    then stale artifacts of the same ``manifest["kind"]`` are pruned. ``keep_held`` holds the result for this
    process before the cache lock is let go, so no other process can prune it in between."""
    started = time.perf_counter()
    target = root / key
    with locked(root):
        if read_manifest(target) is not None:
            if keep_held:
                hold(target)
            return CachedArtifact(target, key, reused=True, seconds=time.perf_counter() - started)
        root.mkdir(parents=True, exist_ok=True)
        if target.exists():  # incomplete or damaged: nobody can be using it as a finished artifact
            _discard(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        try:
            write(staging)
            seconds = time.perf_counter() - started
            files = {
                str(path.relative_to(staging)): path.stat().st_size
                for path in sorted(staging.rglob("*"))
                if path.is_file()
            }
            (staging / MANIFEST_FILE).write_text(
                json.dumps({**manifest, "seconds": round(seconds, 3), "files": files}, indent=2) + "\n",
                encoding="utf-8",
            )
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if keep_held:
            hold(target)
        _prune(root, key, str(manifest["kind"]))
    return CachedArtifact(target, key, reused=False, seconds=seconds)
