"""hub-prefetch: load one HuggingFace Hub model from many processes at once, safely.

Exactly one process downloads; every other waits, then loads a verified, commit-pinned snapshot
without a network call. Broken caches are repaired file by file; real errors surface at once.
"""

from __future__ import annotations

from .errors import (
    CacheWriteError,
    EntryNotFound,
    GatedRepoError,
    HubAccessError,
    HubPrefetchError,
    HubUnavailableError,
    IncompleteSnapshotError,
    InvalidRequestError,
    LockTimeout,
    OfflineCacheMissError,
    RepoNotFound,
    RevisionNotFound,
    UnknownSubfolderError,
)
from .settings import Settings

__version__ = "0.1.0"

__all__ = [
    "CacheWriteError",
    "EntryNotFound",
    "GatedRepoError",
    "HubAccessError",
    "HubPrefetchError",
    "HubUnavailableError",
    "IncompleteSnapshotError",
    "InvalidRequestError",
    "LockTimeout",
    "OfflineCacheMissError",
    "RepoNotFound",
    "RevisionNotFound",
    "Settings",
    "UnknownSubfolderError",
    "__version__",
]
