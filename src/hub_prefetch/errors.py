"""The exception tree of hub-prefetch.

Every error derives from :class:`HubPrefetchError` and also from the stdlib class a caller
would already catch, so ``except OSError`` around a load keeps working::

    HubPrefetchError(Exception)
    ├── InvalidRequestError(HubPrefetchError, ValueError)   bad repo id, subfolder, revision
    │   └── UnknownSubfolderError                           subfolder absent at that commit
    ├── HubAccessError(HubPrefetchError, OSError)           the Hub said no: never retried
    │   ├── RepoNotFound
    │   ├── RevisionNotFound
    │   ├── EntryNotFound
    │   ├── GatedRepoError                                  401/403 without the right token
    │   └── CorruptRepoFileError                            the repo's own index is broken
    ├── HubUnavailableError(HubPrefetchError, OSError)      5xx/429/connection: retried, then this
    ├── OfflineCacheMissError(HubPrefetchError, OSError)    offline and the cache cannot serve it
    ├── CacheWriteError(HubPrefetchError, OSError)          read-only cache, disk full
    ├── IncompleteSnapshotError(HubPrefetchError, OSError)  verification failed after repair
    └── LockTimeout(HubPrefetchError, TimeoutError)         waited longer than the caller allowed

All of them pickle (they cross process boundaries in the distributed coordinator and in
worker pools): the constructors take only keyword-friendly facts and ``__reduce__`` keeps them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
    "RepoNotFound",
    "RevisionNotFound",
    "UnknownSubfolderError",
]


class HubPrefetchError(Exception):
    """Root of every error raised by hub-prefetch."""

    def __init__(self, message: str, **facts: Any) -> None:
        super().__init__(message)
        self.message = message
        self.facts = facts
        for key, value in facts.items():
            setattr(self, key, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.facts))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[HubPrefetchError], message: str, facts: dict[str, Any]) -> HubPrefetchError:
    return cls(message, **facts)


class InvalidRequestError(HubPrefetchError, ValueError):
    """The request itself is wrong (repo id, subfolder, revision, options); nothing was fetched."""


class UnknownSubfolderError(InvalidRequestError):
    """A requested subfolder has no files at the resolved commit."""


class HubAccessError(HubPrefetchError, OSError):
    """The Hub answered definitively: retrying cannot help."""


class RepoNotFound(HubAccessError):
    """No such repository (or no access to a private one)."""


class RevisionNotFound(HubAccessError):
    """The repository exists but not that branch, tag or commit."""


class EntryNotFound(HubAccessError):
    """The repository exists at that commit but not that file."""


class GatedRepoError(HubAccessError):
    """Access needs a token that was not sent or was refused."""


class CorruptRepoFileError(HubAccessError):
    """A file in the repo itself (an ``*.index.json``, ``model_index.json``) is invalid."""


class HubUnavailableError(HubPrefetchError, OSError):
    """The Hub stayed unreachable or overloaded through every allowed retry."""


class OfflineCacheMissError(HubPrefetchError, OSError):
    """Offline mode (``HF_HUB_OFFLINE`` or ``local_files_only``) and the cache cannot serve the load."""


class CacheWriteError(HubPrefetchError, OSError):
    """The cache cannot be written (read-only, full disk, permissions); nothing half-written is kept."""


class IncompleteSnapshotError(HubPrefetchError, OSError):
    """A snapshot is still incomplete or corrupt after repair."""

    def __init__(self, message: str, *, problems: Sequence[str] = (), **facts: Any) -> None:
        super().__init__(message, problems=list(problems), **facts)


class LockTimeout(HubPrefetchError, TimeoutError):
    """The repo lock was not acquired within the caller's timeout."""
