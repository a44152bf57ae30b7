"""Downloading and repairing the files of one snapshot, under the repo lock.

By default files come through our engine (:mod:`hub_prefetch.engine`: no HEAD, every byte hashed
against the listing, resume, ranges); with ``HUB_PREFETCH_ENGINE=huggingface_hub`` each comes through
huggingface_hub's ``hf_hub_download`` pinned to the commit, with our bounded retries around it. Either
way files are fetched in parallel (``HUB_PREFETCH_DOWNLOAD_WORKERS``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from huggingface_hub import hf_hub_download

from ..cache import blobs_dir
from ..engine import Engine, Verdict
from ..engine.publish import prune_partials
from ..retry import call_with_retries
from ..verify import ExpectedFile, Problem, check_file, clean_orphan_temps
from .request import Request
from .sidefiles import Fence, store_listing

__all__ = ["Fetcher", "clean_temps", "remove_entry"]

logger = logging.getLogger("hub_prefetch.prefetch")


def _inside(path: str, folder: Path) -> bool:
    real = os.path.realpath(folder)
    return os.path.commonpath([path, real]) == real


def remove_entry(snapshot: Path, path: str, *, blobs: Path, blob_too: bool) -> None:
    """Drop a snapshot entry (and its blob when the blob's content is wrong) so it is fetched again.

    Never follows a link to delete: the entry goes only when its folder really is inside the snapshot,
    and a blob only when the entry's link resolves to a regular file in this repo's ``blobs/``. In a
    group-writable shared cache a planted link must not make us delete a file outside the cache.
    """
    target = snapshot / path
    if not _inside(os.path.realpath(target.parent), snapshot):
        logger.warning("not removing %s: its folder leads out of the snapshot", target)
        return
    try:
        st = os.lstat(target)
    except OSError:
        return
    if blob_too and stat.S_ISLNK(st.st_mode):
        blob = os.path.realpath(target)
        with contextlib.suppress(OSError):
            if os.path.dirname(blob) == os.path.realpath(blobs) and stat.S_ISREG(os.lstat(blob).st_mode):
                os.unlink(blob)
            else:
                logger.warning("not removing %s (linked from %s): not a blob of this repo", blob, target)
    with contextlib.suppress(OSError):
        os.unlink(target)  # a link itself, or a plain file where symlinks are off: never followed


def clean_temps(req: Request, *, kernel_locks: bool) -> None:
    """Remove temp files of dead or failed writers (call it holding the repo lock).

    Where kernel locks cannot be trusted, a temp file must also be older than a lease TTL.
    """
    s = req.settings
    min_age = 0.0 if kernel_locks else s.lease_ttl
    clean_orphan_temps(s.cache_dir, req.repo_type, req.repo_id, min_age_s=min_age)


def _download(req: Request, commit: str, path: str) -> None:
    s = req.settings
    call_with_retries(
        lambda: hf_hub_download(
            req.repo_id,
            path,
            repo_type=req.repo_type,
            revision=commit,
            cache_dir=str(s.cache_dir),
            endpoint=s.endpoint,
            token=req.token,
        ),
        what=f"{req.repo_id}@{commit[:12]}/{path}",
        settings=s,
    )


class Fetcher:
    """Downloads what is missing or wrong in one snapshot, in parallel, and keeps the tally."""

    def __init__(self, req: Request, commit: str, listing: dict[str, ExpectedFile], *, fence: Fence) -> None:
        self.req, self.commit, self.listing = req, commit, listing
        self.fence = fence
        self.snapshot = req.snapshot(commit)
        self.blobs = blobs_dir(req.settings.cache_dir, req.repo_type, req.repo_id)
        self.downloaded: list[str] = []
        self.bytes = 0
        self.bytes_resumed = 0
        self.verdicts: dict[str, Verdict] = {}
        self._pruned = False
        self._lock = threading.Lock()

    def ensure(self, paths: Sequence[str]) -> None:
        """Fetch every path that is missing, dangling or of the wrong size."""
        todo = []
        for p in paths:
            problem = check_file(self.snapshot, self.listing[p], deep=False)
            if problem is None:
                continue
            if not _inside(os.path.realpath((self.snapshot / p).parent), self.snapshot):
                # A planted folder link: never written through. Verification reports the file.
                logger.warning("not fetching %s: its folder leads out of the snapshot", p)
                continue
            if problem.kind == "size":
                self.fence()
                remove_entry(self.snapshot, p, blobs=self.blobs, blob_too=True)
            todo.append(p)
        if not todo:
            return
        if self.req.settings.engine == "hub_prefetch":
            self._engine(todo)
        else:
            self._huggingface_hub(todo)

    def _engine(self, todo: Sequence[str]) -> None:
        engine = Engine(self.req, self.commit, self.listing, fence=self.fence)
        if not self._pruned:
            self._pruned = True
            self.fence()
            prune_partials(self.req, engine.partial_names())
        outcome = engine.fetch(todo)
        self.downloaded += outcome.downloaded
        self.bytes += outcome.bytes_received
        self.bytes_resumed += outcome.bytes_resumed
        self.verdicts.update(outcome.verdicts)
        if outcome.learned:
            # What a bare listing lacked and the responses told: kept, so `verify` checks it later.
            self.listing.update(outcome.learned)
            store_listing(self.req, self.commit, self.listing, fence=self.fence)

    def _huggingface_hub(self, todo: Sequence[str]) -> None:
        workers = max(1, min(self.req.settings.download_workers, len(todo)))
        if workers == 1:
            for p in todo:
                self._one(p)
            return
        pool = ThreadPoolExecutor(workers, thread_name_prefix="hub_prefetch")
        try:
            futures = [pool.submit(self._one, p) for p in todo]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()  # the first failure (a fatal error, a lost lock) ends the fetch
        finally:
            # Queued downloads never start after a failure or Ctrl-C; running ones end by themselves.
            pool.shutdown(wait=True, cancel_futures=True)

    def repair(self, problems: Sequence[Problem]) -> list[str]:
        """Drop every entry ``problems`` names (and the blob, when its content is wrong), fetch again."""
        for problem in problems:
            self.fence()
            logger.warning(
                "%s: repairing %s (%s: %s)", self.req.label, problem.path, problem.kind, problem.detail
            )
            remove_entry(
                self.snapshot, problem.path, blobs=self.blobs, blob_too=problem.kind in ("size", "hash")
            )
        self.ensure([p.path for p in problems])
        return [p.path for p in problems]

    def _one(self, path: str) -> None:
        self.fence()
        _download(self.req, self.commit, path)
        self.fence()  # between files: an evicted holder stops after the file it was writing
        with self._lock:
            self.downloaded.append(path)
            self.bytes += self.listing[path].size or 0

    def read(self, path: str) -> bytes:
        """The bytes of one file of the snapshot, fetched first if needed (index files, for selection)."""
        self.ensure([path])
        return (self.snapshot / path).read_bytes()
