"""The source's side of the fan-out: run this domain's own Hub download in a thread and expose each file
to the sender while it arrives (the growing temp file, then the published file)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from .. import cache, errors
from ..engine import partial_dir
from ..engine.parts import contiguous_prefix, read_record, sidecar
from ..prefetch import PrefetchResult, Request
from ..prefetch.sidefiles import read_listing
from ..verify import ExpectedFile
from .localcopy import LocalCopy
from .manifest import Item, Manifest, build_manifest

__all__ = ["download_exposed", "in_snapshot"]

_POLL = 0.02


def in_snapshot(snapshot: Path, item: Item) -> Path | None:
    """The item's file in ``snapshot`` when it is there at its full size."""
    path = snapshot / item.paths[0]
    try:
        return path if path.stat().st_size == item.size else None
    except OSError:
        return None


def download_exposed(
    pinned: Request, commit: str, copy: LocalCopy, download: Callable[[], PrefetchResult]
) -> PrefetchResult:
    """``download()`` (the domain's own flow, under its repo lock) in a thread; meanwhile the manifest and
    every item's bytes are put in ``copy`` as they appear in the cache. A failure is put there too (see
    :meth:`LocalCopy.fail_with`) and raised."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["result"] = download()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            box["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=work, name="hub-prefetch-fanout-hub", daemon=True)
    thread.start()
    try:
        if copy.manifest is None:
            copy.set_manifest(_manifest_while(pinned, commit, done, box))
        _watch(pinned, copy, done)
    except BaseException as exc:  # noqa: BLE001 - raised below, after the download thread ends
        if not done.is_set():
            thread.join()
        if "error" not in box:
            box["error"] = exc
    thread.join()
    if "error" in box:
        failure: BaseException = box["error"]
        copy.fail_with(failure)
        raise failure
    result: PrefetchResult = box["result"]
    _watch(pinned, copy, done)  # every item is published by now
    if not copy.complete():
        copy.fail(None)
    return result


def _manifest_while(pinned: Request, commit: str, done: threading.Event, box: dict[str, Any]) -> Manifest:
    """The manifest, from the listing and the metadata files as the download stores them."""
    snapshot = pinned.snapshot(commit)

    def wait_for(get: Callable[[], Any], what: str) -> Any:
        while True:
            finished = done.is_set()
            value = get()
            if value is not None:
                return value
            if finished:
                if "error" in box:
                    raise box["error"]
                raise errors.IncompleteSnapshotError(
                    f"{pinned.label}: {what} is not in the cache after its download",
                    repo_id=pinned.repo_id,
                    revision=pinned.revision,
                )
            time.sleep(_POLL)

    def listing() -> dict[str, ExpectedFile]:
        return cast("dict[str, ExpectedFile]", wait_for(lambda: read_listing(pinned, commit), "the listing"))

    def read(path: str) -> bytes:
        size = listing()[path].size

        def get() -> bytes | None:
            with contextlib.suppress(OSError):
                target = snapshot / path
                if size is None or target.stat().st_size == size:
                    return target.read_bytes()
            return None

        return cast("bytes", wait_for(get, path))

    return build_manifest(pinned, commit, read, listing)


def _watch(pinned: Request, copy: LocalCopy, done: threading.Event) -> None:
    """Expose the Hub download to the sender until it ends: each item's growing temp file while it is
    written (huggingface_hub's ``blobs/<etag>[.<id>].incomplete``, the engine's partial file), the
    published file once it is in the snapshot. What the sender takes from a temp file is checked
    against the digest as it goes out: a temp file written out of order or abandoned costs a resend from
    the published file, never a bad byte downstream.

    huggingface_hub writes a body in blocks of ``DOWNLOAD_CHUNK_SIZE`` (10 MB): a smaller file appears
    only whole, and is relayed then. The engine's files are followed chunk by chunk, split or not."""
    manifest = copy.manifest
    assert manifest is not None
    copy.tailing = True
    snapshot = pinned.snapshot(manifest.commit)
    blobs = cache.blobs_dir(pinned.settings.cache_dir, pinned.repo_type, pinned.repo_id)
    partials = partial_dir(pinned)
    while True:
        finished = done.is_set()
        for j, item in enumerate(manifest.items):
            if copy.final[j]:
                continue
            if (path := in_snapshot(snapshot, item)) is not None:
                copy.set_final(j, path)
            elif (grown := _growing((blobs, partials), item.etag, copy.avail[j], item.size)) is not None:
                copy.grow(j, *grown)
        if finished or copy.complete():
            return
        done.wait(_POLL)


def _growing(folders: tuple[Path, ...], etag: str, avail: int, size: int) -> tuple[Path, int] | None:
    """The temp file of blob ``etag`` being downloaded, with how many bytes from its start are written,
    if that is more than ``avail``: huggingface_hub's ``<etag>.incomplete`` / ``<etag>.<id>.incomplete``
    (the largest), or the engine's partial file ``<etag>``. A single stream writes that front to back,
    so its length is its front; a split download writes ranges ahead of its front and keeps their
    progress in the ``.parts`` record beside it, whose contiguous prefix is the front."""
    best: tuple[Path, int] | None = None
    for folder in folders:
        engine = folder.name == "partial"
        if engine and (record := sidecar(folder / etag)).exists():
            parts = read_record(record, size)
            front = contiguous_prefix(parts) if parts is not None else 0
            if front > avail and (best is None or front > best[1]):
                best = (folder / etag, front)
            continue
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                name = entry.name
                ours = name == etag and engine
                if ours or (name.startswith(etag + ".") and name.endswith(".incomplete")):
                    with contextlib.suppress(OSError):
                        length = entry.stat(follow_symlinks=False).st_size
                        if length > avail and (best is None or length > best[1]):
                            best = (Path(entry.path), length)
    return best
