"""Publishing a verified file into huggingface_hub's cache layout, and where partial files wait.

A file is published by renaming its verified partial file to ``blobs/<etag>`` and pointing each
``snapshots/<commit>/<path>`` at it with a relative link, both replaced atomically; where the cache does
not support symlinks (``HF_HUB_DISABLE_SYMLINKS``, some filesystems) the file itself goes into the
snapshot, as huggingface_hub does. ``hf_hub_download(..., local_files_only=True)``, offline
``snapshot_download`` and ``scan_cache_dir()`` then see exactly what huggingface_hub would have written.

Partial files live in ``.hub_prefetch/partial/`` of the repo folder, not in ``blobs/``: huggingface_hub
never touches them, nobody else's temp-file cleanup removes them, and only the holder of the repo lock
opens them, so the next holder can resume a download where a dead one stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from huggingface_hub.file_download import are_symlinks_supported

from .. import cache, errors
from ..prefetch.request import Request
from ..prefetch.sidefiles import Fence

__all__ = ["link_blob", "partial_dir", "partial_path", "prune_partials", "publish", "safe_repo_path"]

logger = logging.getLogger("hub_prefetch.engine")


def partial_dir(req: Request) -> Path:
    return cache.repo_folder(req.settings.cache_dir, req.repo_type, req.repo_id) / ".hub_prefetch" / "partial"


def partial_path(req: Request, name: str) -> Path:
    """Where the partial file of blob ``name`` (its etag, or a key when the etag is unknown) waits."""
    folder = partial_dir(req)
    cache.ensure_dir(folder)
    return folder / name


def prune_partials(req: Request, keep: set[str]) -> list[str]:
    """Remove partial files (and their range records) whose names are not in ``keep``: downloads of
    files the commit being fetched does not have. Only a lock holder calls this, as only it opens them."""
    folder = partial_dir(req)
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if entry.name.split(".", 1)[0] not in keep:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(entry.name)
    if removed:
        logger.info("%s: removed %d partial file(s) of other commits", req.label, len(removed))
    return removed


def safe_repo_path(path: str) -> PurePosixPath:
    """A listing's file path as a relative path that stays inside the snapshot; a hostile one is refused."""
    parts = path.split("/")
    if "\\" in path or "\0" in path or any(p in ("", ".", "..") for p in parts):
        raise errors.CorruptRepoFileError(f"the repo lists a file path that leaves its folder: {path!r}")
    return PurePosixPath(*parts)


def _check_inside(snapshot: Path, pointer: Path) -> None:
    """Refuse to write through a folder link planted in the snapshot (a shared cache is group-writable)."""
    real = os.path.realpath(snapshot)
    if os.path.commonpath([os.path.realpath(pointer.parent), real]) != real:
        raise OSError(f"{pointer.parent} leads out of the snapshot")


def _link(blob: Path, pointer: Path) -> None:
    relative = os.path.relpath(blob, pointer.parent)
    tmp = pointer.parent / f".{pointer.name}.{uuid.uuid4().hex[:12]}.link"
    os.symlink(relative, tmp)
    try:
        os.replace(tmp, pointer)  # replaces a stale link or file; never writes through it
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def link_blob(
    req: Request, commit: str, etag: str, paths: Iterable[str], *, fence: Fence, made: set[Path] | None = None
) -> None:
    """Point ``paths`` of ``commit`` at the blob ``etag`` already in ``blobs/`` (checked by the caller)."""
    blob = cache.blobs_dir(req.settings.cache_dir, req.repo_type, req.repo_id) / etag
    pointers = _pointers(req, commit, paths, made)
    with _writing(req, f"link {etag}", blob):
        fence()
        for pointer in pointers:
            _link(blob, pointer)


def _pointers(req: Request, commit: str, paths: Iterable[str], made: set[Path] | None) -> list[Path]:
    """The snapshot entries of ``paths``, their folders created inside the snapshot (never through a link).

    ``made``: folders already created and checked in this download, so hundreds of files in one folder
    cost one ``mkdir`` and one check, not hundreds.
    """
    snapshot = req.snapshot(commit)
    pointers = [snapshot / safe_repo_path(p) for p in paths]
    made = set() if made is None else made
    with _writing(req, "create the snapshot folders", snapshot):
        for pointer in pointers:
            if pointer.parent not in made:
                cache.ensure_dir(pointer.parent)
                _check_inside(snapshot, pointer)
                made.add(pointer.parent)
    return pointers


@contextlib.contextmanager
def _writing(req: Request, what: str, path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise errors.CacheWriteError(
            f"{req.label}: cannot {what}: {exc.strerror or exc}",
            path=str(exc.filename or path),
            errno=exc.errno,
        ) from exc


def publish(
    req: Request,
    commit: str,
    etag: str,
    paths: Iterable[str],
    partial: Path,
    *,
    fence: Fence,
    made: set[Path] | None = None,
) -> None:
    """Publish the verified ``partial`` as blob ``etag`` and as each of ``paths`` of ``commit``.

    ``fence`` is called right before the first write: an evicted lock holder publishes nothing. ``made``:
    the folders this download already created (see :func:`_pointers`).
    """
    paths = list(paths)
    blobs = cache.blobs_dir(req.settings.cache_dir, req.repo_type, req.repo_id)
    fence()
    pointers = _pointers(req, commit, paths, made)
    with _writing(req, f"publish {etag}", partial):
        os.chmod(partial, cache.SHARED_FILE_MODE)
        if are_symlinks_supported(req.settings.cache_dir):
            if made is None or blobs not in made:
                cache.ensure_dir(blobs)
                if made is not None:
                    made.add(blobs)
            blob = blobs / etag
            os.replace(partial, blob)
            for pointer in pointers:
                _link(blob, pointer)
        else:
            first, *others = pointers
            os.replace(partial, first)
            for pointer in others:
                tmp = pointer.parent / f".{pointer.name}.{uuid.uuid4().hex[:12]}.copy"
                shutil.copyfile(first, tmp)
                os.replace(tmp, pointer)
    logger.debug("%s: published %s as %s", req.label, etag, ", ".join(paths))
