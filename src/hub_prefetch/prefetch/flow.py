"""The flow of one request: warm check -> lock -> resolve once -> select -> fetch -> verify -> stamp.

The warm path reads two small JSON side files and ``stat``s each selected file: no lock, no network.
Everything else happens under the repo lock, so one process per cache downloads while the others
wait and then take the warm path. Correctness does not rest on the lock: huggingface_hub writes blobs
atomically, and we verify what is on disk before we stamp it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable

from .. import cache, errors
from ..hfpatch import replace_blob_locks
from ..lock import RepoLock
from ..select import Selection, select_files
from ..verify import ExpectedFile, Problem, check_files, clean_orphan_temps, sizes_hold
from .fetch import Fetcher
from .indexes import fetching_reader, offline_reader
from .request import Request
from .result import PrefetchResult
from .sidefiles import (
    fetch_listing,
    known_commit,
    mark_absent,
    read_listing,
    read_stamp,
    record_revision,
    write_stamp,
)

__all__ = ["run", "select", "try_warm"]

logger = logging.getLogger("hub_prefetch.prefetch")


def _result(
    req: Request,
    commit: str,
    sizes: dict[str, int],
    *,
    started: float,
    warm: bool,
    fetcher: Fetcher | None = None,
    repaired: list[str] | None = None,
    waited: float = 0.0,
    unchecked: tuple[str, ...] = (),
) -> PrefetchResult:
    return PrefetchResult(
        repo_id=req.repo_id,
        repo_type=req.repo_type,
        revision=req.revision,
        commit=commit,
        snapshot_path=str(req.snapshot(commit)),
        files=tuple(sorted(sizes)),
        bytes_total=sum(sizes.values()),
        bytes_downloaded=fetcher.bytes if fetcher else 0,
        downloaded=tuple(sorted(fetcher.downloaded)) if fetcher else (),
        repaired=tuple(sorted(repaired or ())),
        warm=warm,
        waited_s=waited,
        elapsed_s=time.monotonic() - started,
        unchecked=unchecked,
    )


def try_warm(req: Request, *, deep: bool, any_age: bool, started: float) -> PrefetchResult | None:
    """The result of a verified stamp that still holds (stats only), or None."""
    commit = known_commit(req, any_age=any_age)
    if commit is None:
        return None
    stamp = read_stamp(req, commit, deep=deep)
    if stamp is None or not sizes_hold(req.snapshot(commit), stamp[0]):
        return None
    return _result(req, commit, stamp[0], started=started, warm=True, unchecked=stamp[1])


def select(req: Request, listing: dict[str, ExpectedFile], read: Callable[[str], bytes]) -> Selection:
    """The files ``req`` needs from a commit's listing; ``read`` gives an index file's bytes."""
    return select_files(
        listing,
        req.subfolders,
        load_index=read,
        variant=req.variant,
        all_files=req.all_files,
        include_root_metadata=req.include_root_metadata or not req.subfolders,
        weights=req.weights,
    )


def _offline(req: Request, *, deep: bool, started: float) -> PrefetchResult:
    """Offline and not warm: verify what the disk has against a recorded listing, or say why not."""
    commit = known_commit(req, any_age=True)
    listing = read_listing(req, commit) if commit else None
    if commit is None or listing is None:
        raise errors.OfflineCacheMissError(
            f"{req.label}: offline (HF_HUB_OFFLINE or local_files_only) and this cache has no verified "
            "snapshot of it; run once online, or `hub-prefetch warm` it",
            repo_id=req.repo_id,
            revision=req.revision,
        )
    snapshot = req.snapshot(commit)
    selection = select(req, listing, offline_reader(req.label, snapshot, listing))
    problems = check_files(snapshot, [listing[p] for p in selection.files], deep=deep)
    if problems:
        raise errors.OfflineCacheMissError(
            f"{req.label}: offline and the cached snapshot is incomplete: "
            + ", ".join(f"{p.path} ({p.kind})" for p in problems[:5]),
            missing=[p.path for p in problems],
        )
    sizes = {p: int(listing[p].size or 0) for p in selection.files}
    unchecked = _unchecked(listing, selection.files)
    with contextlib.suppress(errors.CacheWriteError):
        write_stamp(req, commit, sizes, deep=deep, unchecked=unchecked)
    return _result(req, commit, sizes, started=started, warm=True, unchecked=unchecked)


def _unchecked(listing: dict[str, ExpectedFile], files: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f for f in files if not listing[f].has_digest)


def _clean_temps(req: Request, lock: RepoLock) -> None:
    """Remove temp files of dead writers, holding the lock. Where kernel locks cannot be trusted, a temp
    file goes once seen unchanged for a lease TTL on this host's clock, or at once when the lease was
    taken over from a dead holder (its writer)."""
    s = req.settings
    clean_orphan_temps(
        s.cache_dir,
        req.repo_type,
        req.repo_id,
        min_age_s=0.0 if lock.backend == "flock" else s.lease_ttl,
        writers_gone=lock.succeeded_dead_holder,
    )


class _Evicted(errors.LockLostError):
    """Raised by the fence inside the flow; :func:`run` waits again (at most ``_MAX_EVICTIONS`` times)."""


_MAX_EVICTIONS = 3


def _locked(req: Request, lock: RepoLock, *, deep: bool, started: float, waited: float) -> PrefetchResult:
    """The download itself, holding the repo lock; every write into the cache is fenced."""
    fence = lock.fence(req.label, _Evicted)
    commit = known_commit(req, any_age=False)
    if commit is None:
        commit, listing = fetch_listing(req, req.revision, fence=fence)
        record_revision(req, commit, fence=fence)  # only a real answer about the branch renews its record
    else:
        listing = read_listing(req, commit) or fetch_listing(req, commit, fence=fence)[1]
    fetcher = Fetcher(req, commit, listing, fence=fence)
    fence()
    _clean_temps(req, lock)
    if lock.probe.flock_raises:
        replace_blob_locks()
    selection = select(req, listing, fetching_reader(req.label, fetcher, listing, fence=fence))
    fetcher.ensure(selection.files)
    expected = [listing[p] for p in selection.files]
    problems = check_files(req.snapshot(commit), expected, deep=deep)
    repaired: list[str] = []
    if problems:
        repaired = fetcher.repair(problems)
        problems = check_files(req.snapshot(commit), expected, deep=deep)
        if problems:
            raise errors.IncompleteSnapshotError(
                f"{req.label}: snapshot still incomplete after repair: "
                + ", ".join(f"{p.path} ({p.kind})" for p in problems[:5]),
                problems=[f"{p.path}: {p.kind}" for p in problems],
            )
    sizes = {p: int(listing[p].size or 0) for p in selection.files}
    unchecked = _unchecked(listing, selection.files)
    if unchecked:
        logger.warning(
            "%s: the Hub gave no digest for %d file(s) (%s%s): checked by size only",
            req.label,
            len(unchecked),
            ", ".join(unchecked[:3]),
            ", ..." if len(unchecked) > 3 else "",
        )
    mark_absent(req, commit, listing, fence=fence)
    try:
        write_stamp(req, commit, sizes, deep=deep, unchecked=unchecked, fence=fence)
    except errors.CacheWriteError as exc:
        # Verified just now, only not recorded (a read-only repo folder beside a writable lock folder):
        # serve it; the next call verifies again.
        logger.debug("%s: stamp not written: %s", req.label, exc)
    return _result(
        req,
        commit,
        sizes,
        started=started,
        warm=False,
        fetcher=fetcher,
        repaired=repaired,
        waited=waited,
        unchecked=unchecked,
    )


def _unwritable(req: Request, exc: errors.CacheWriteError, *, deep: bool, started: float) -> PrefetchResult:
    """A cache we cannot write (read-only mount, no permission): serve a verified snapshot of the commit
    the revision still points at, with zero writes; otherwise one typed error naming cache and commit."""
    commit = known_commit(req, any_age=True)
    stamp = read_stamp(req, commit, deep=deep) if commit else None
    sizes, unchecked = stamp if stamp is not None else (None, ())
    listing = None
    current = commit
    if not cache.is_commit_hash(req.revision):
        # One metadata request, which also gives the listing an unstamped snapshot is checked against.
        current, listing = fetch_listing(req, req.revision)
    if commit is not None and current != commit and sizes is not None:
        raise errors.CacheWriteError(
            f"{req.label} now points at {current}, but the cache {req.settings.cache_dir} "
            f"(cannot be written: {exc}) holds {commit}",
            path=exc.path,
            errno=exc.errno,
            cached_commit=commit,
            current_commit=current,
            repo_id=req.repo_id,
            revision=req.revision,
        ) from exc
    assert current is not None  # a commit hash, or the Hub's answer
    if current == commit and sizes is not None and sizes_hold(req.snapshot(current), sizes):
        return _result(req, current, sizes, started=started, warm=True, unchecked=unchecked)
    # No stamp (a cache filled by plain huggingface_hub, or read-only before we stamped it): verify it
    # in place; nothing can be fetched, so any problem is final.
    listing = listing or read_listing(req, current) or fetch_listing(req, current)[1]
    snapshot = req.snapshot(current)
    try:
        selection = select(req, listing, offline_reader(req.label, snapshot, listing))
        problems = check_files(snapshot, [listing[p] for p in selection.files], deep=deep)
    except errors.OfflineCacheMissError as miss:
        problems = [Problem(p, "missing", str(miss)) for p in miss.missing or ("an index file",)]
    if problems:
        raise errors.CacheWriteError(
            f"{req.label}: the cache {req.settings.cache_dir} cannot be written ({exc}) and its snapshot of "
            f"{current} is incomplete: " + ", ".join(f"{p.path} ({p.kind})" for p in problems[:5]),
            path=exc.path or str(req.settings.cache_dir),
            errno=exc.errno,
            cached_commit=current if os.path.isdir(snapshot) else None,
            current_commit=current,
            repo_id=req.repo_id,
            revision=req.revision,
        ) from exc
    sizes = {p: int(listing[p].size or 0) for p in selection.files}
    unchecked = _unchecked(listing, selection.files)
    return _result(req, current, sizes, started=started, warm=True, unchecked=unchecked)


def run(
    req: Request, *, local_files_only: bool = False, deep: bool | None = None, force_check: bool = False
) -> PrefetchResult:
    """The whole flow for a validated request (strict: typed errors).

    ``force_check`` skips the warm path and checks every file under the lock (``repair``).
    """
    started = time.monotonic()
    deep = req.settings.deep_verify if deep is None else deep
    offline = local_files_only or req.settings.offline
    if not force_check:
        warm = try_warm(req, deep=deep, any_age=offline, started=started)
        if warm is not None:
            return warm
    if offline:
        return _offline(req, deep=deep, started=started)
    lock = RepoLock(
        req.settings.cache_dir,
        req.repo_id,
        repo_type=req.repo_type,
        revision=req.revision,
        settings=req.settings,
    )
    t0 = time.monotonic()
    seen: list[PrefetchResult] = []

    def peer_finished() -> bool:
        # Checked at every poll of the lock: when the holder's stamp appears, every waiter leaves at
        # once without queueing for the lock just to find nothing left to do.
        warm = None if force_check else try_warm(req, deep=deep, any_age=False, started=started)
        if warm is not None:
            seen.append(warm)
        return warm is not None

    evictions = 0
    while True:
        try:
            held = lock.acquire_unless(peer_finished)
        except errors.CacheWriteError as exc:
            return _unwritable(req, exc, deep=deep, started=started)
        if not held:
            return dataclasses.replace(seen[-1], waited_s=time.monotonic() - t0)
        try:
            return _holding(req, lock, deep=deep, force_check=force_check, started=started, t0=t0)
        except _Evicted as exc:
            evictions += 1
            if evictions > _MAX_EVICTIONS:
                raise errors.LockLostError(str(exc), **exc.facts) from exc
            logger.warning("%s; stopped publishing, waiting for the lock again", exc)
        except errors.CacheWriteError as exc:
            # A writable lock folder beside read-only repo folders fails here, inside the lock.
            unwritable = exc
            break
        finally:
            lock.release()
    return _unwritable(req, unwritable, deep=deep, started=started)


def _holding(
    req: Request, lock: RepoLock, *, deep: bool, force_check: bool, started: float, t0: float
) -> PrefetchResult:
    waited = time.monotonic() - t0
    if not force_check:
        warm = try_warm(req, deep=deep, any_age=False, started=started)
        if warm is not None:
            return dataclasses.replace(warm, waited_s=waited)
    try:
        return _locked(req, lock, deep=deep, started=started, waited=waited)
    except _Evicted:
        raise  # not ours to clean any more: the new holder's temp files may be there
    except BaseException:
        # huggingface_hub < 1.18 keeps a failed download's `<etag>.incomplete`: on a full disk that is
        # the very space the next attempt needs, and nobody else would remove it until then. Ctrl-C
        # too: an interrupted warm must not leave temp files behind (live writers' are skipped).
        if lock.still_held():
            _clean_temps(req, lock)
        raise
