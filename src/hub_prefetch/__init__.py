"""hub-prefetch: load one HuggingFace Hub model from many processes at once, safely.

Exactly one process downloads; every other waits, then loads a verified, commit-pinned snapshot
without a network call. Broken caches are repaired file by file; real errors surface at once.
"""

from __future__ import annotations

from .distributed import prefetch_distributed
from .errors import (
    CacheWriteError,
    CorruptRepoFileError,
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
from .heal import from_pretrained_with_prefetch, retry_on_missing_shard
from .lock import RepoLock, repo_lock
from .patch import install, protected_loads, uninstall
from .pipeline import prefetch_pipeline
from .prefetch import PrefetchResult, prefetch, prefetch_subfolders, repair, verify
from .settings import Settings
from .verify import VerifyReport

__version__ = "0.1.0"

__all__ = [
    "CacheWriteError",
    "CorruptRepoFileError",
    "EntryNotFound",
    "GatedRepoError",
    "HubAccessError",
    "HubPrefetchError",
    "HubUnavailableError",
    "IncompleteSnapshotError",
    "InvalidRequestError",
    "LockTimeout",
    "OfflineCacheMissError",
    "PrefetchResult",
    "RepoLock",
    "RepoNotFound",
    "RevisionNotFound",
    "Settings",
    "UnknownSubfolderError",
    "VerifyReport",
    "__version__",
    "from_pretrained_with_prefetch",
    "install",
    "prefetch",
    "prefetch_distributed",
    "prefetch_pipeline",
    "prefetch_subfolders",
    "protected_loads",
    "repair",
    "repo_lock",
    "retry_on_missing_shard",
    "uninstall",
    "verify",
]
