"""Reading a snapshot's ``*.index.json`` for selection, trusting it only once its bytes match the listing.

An index decides which shards a load needs, so it is read before anything is verified. A local copy
damaged by a crash mid-write (zero-filled, truncated) is this cache's problem, not the repo's: it is
fetched again (online) or reported as a cache miss (offline). Only an index whose bytes match the Hub's
hash and still do not parse is the repo's fault (:class:`~hub_prefetch.errors.CorruptRepoFileError`,
raised by :mod:`hub_prefetch.select`). Index files are small: hashing each one costs microseconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from .. import errors
from ..verify import ExpectedFile, Problem, check_file
from .fetch import Fetcher, remove_entry
from .sidefiles import Fence

__all__ = ["damaged_locally", "fetching_reader", "offline_reader"]

logger = logging.getLogger("hub_prefetch.prefetch")

Reader = Callable[[str], bytes]


def damaged_locally(snapshot: Path, expected: ExpectedFile) -> Problem | None:
    """A present index whose size or content differs from the listing's (missing is not damage)."""
    problem = check_file(snapshot, expected, deep=True)
    return problem if problem is not None and problem.kind in ("size", "hash") else None


def fetching_reader(
    label: str, fetcher: Fetcher, listing: dict[str, ExpectedFile], *, fence: Fence
) -> Reader:
    """Holding the repo lock: an index's bytes, fetched again first when the local copy is damaged."""

    def read(path: str) -> bytes:
        problem = damaged_locally(fetcher.snapshot, listing[path])
        if problem is not None:
            logger.warning("%s: the local %s is damaged (%s); fetching it again", label, path, problem.detail)
            fence()
            remove_entry(fetcher.snapshot, path, blobs=fetcher.blobs, blob_too=True)
        return fetcher.read(path)

    return read


def offline_reader(label: str, snapshot: Path, listing: dict[str, ExpectedFile]) -> Reader:
    """Offline: an index's bytes, or :class:`~hub_prefetch.errors.OfflineCacheMissError` when the local
    copy is missing or damaged (repairing it needs the Hub)."""

    def read(path: str) -> bytes:
        problem = damaged_locally(snapshot, listing[path])
        if problem is not None:
            raise errors.OfflineCacheMissError(
                f"{label}: offline and the cached {path} is damaged ({problem.detail}); run once online "
                "(or `hub-prefetch repair`) to fetch it again",
                missing=[path],
            )
        try:
            return (snapshot / path).read_bytes()
        except OSError as exc:
            raise errors.OfflineCacheMissError(f"{label}: offline and {path} is not cached") from exc

    return read
