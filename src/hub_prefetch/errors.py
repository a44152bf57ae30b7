"""The exception tree of hub-prefetch, with the facts each error carries.

Every error derives from :class:`HubPrefetchError` and also from the stdlib class a caller would
already catch, so ``except OSError`` around a load keeps working::

    HubPrefetchError(Exception)                             repo_id, revision, origin_rank
    ├── InvalidRequestError(HubPrefetchError, ValueError)   bad repo id, subfolder, revision, setting
    │   └── UnknownSubfolderError                           subfolders absent at that commit
    ├── HubAccessError(HubPrefetchError, OSError)           the Hub said no, never retried: path, status
    │   ├── RepoNotFound
    │   ├── RevisionNotFound
    │   ├── EntryNotFound
    │   ├── GatedRepoError                                  401/403 without the right token
    │   └── CorruptRepoFileError                            the repo's own index is broken
    ├── HubUnavailableError(HubPrefetchError, OSError)      5xx/429/connection, retried: attempts
    ├── OfflineCacheMissError(HubPrefetchError, OSError)    offline and the cache cannot serve: missing
    ├── CacheWriteError(HubPrefetchError, OSError)          read-only cache, disk full: path, errno
    ├── IncompleteSnapshotError(HubPrefetchError, OSError)  verification failed after repair: problems
    │   └── ChecksumMismatchError                           a file's bytes differ from the listing's hash,
    │                                                       again after one re-fetch: path, expected, received
    ├── LockTimeout(HubPrefetchError, TimeoutError)         lock_path, holder, waited_s, backend
    ├── LockLostError(HubPrefetchError, OSError)            the lock was taken from us, again and again
    └── RemoteError(HubPrefetchError)                       another rank's untyped error: error_type

Facts are declared keyword arguments, typed attributes and part of :attr:`HubPrefetchError.facts`;
an unset fact is None. Every error pickles with its facts (filelock's ``Timeout`` is the model: they
cross process boundaries in worker pools and ``torch.distributed``), and :func:`to_json` /
:func:`from_json` carry them through files other users may write, where unpickling would run their code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "CacheWriteError",
    "ChecksumMismatchError",
    "CorruptRepoFileError",
    "EntryNotFound",
    "GatedRepoError",
    "HubAccessError",
    "HubPrefetchError",
    "HubUnavailableError",
    "IncompleteSnapshotError",
    "InvalidRequestError",
    "LockLostError",
    "LockTimeout",
    "OfflineCacheMissError",
    "RemoteError",
    "RepoNotFound",
    "RevisionNotFound",
    "UnknownSubfolderError",
    "from_json",
    "to_json",
]


class CommonFacts(TypedDict, total=False):
    """The facts every error may carry (see :class:`HubPrefetchError`)."""

    repo_id: str | None
    revision: str | None
    origin_rank: int | None


class RequestFacts(CommonFacts, total=False):
    """The facts of an :class:`InvalidRequestError`."""

    subfolder: str | None
    variable: str | None


def _rebuild(cls: type[HubPrefetchError], message: str, facts: dict[str, Any]) -> HubPrefetchError:
    return cls(message, **facts)


class HubPrefetchError(Exception):
    """Root of every error raised by hub-prefetch.

    :ivar repo_id: the repo the request named, when known.
    :ivar revision: the revision the request named, when known.
    :ivar origin_rank: in a ``torch.distributed`` job, the rank that raised it first.
    """

    _FACTS: ClassVar[tuple[str, ...]] = ("repo_id", "revision", "origin_rank")

    def __init__(
        self,
        message: str,
        *,
        repo_id: str | None = None,
        revision: str | None = None,
        origin_rank: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.repo_id = repo_id
        self.revision = revision
        self.origin_rank = origin_rank

    @property
    def facts(self) -> dict[str, Any]:
        """The declared facts that are set, by name."""
        return {name: value for name in self._FACTS if (value := getattr(self, name)) is not None}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.facts))

    def __str__(self) -> str:
        return self.message


class InvalidRequestError(HubPrefetchError, ValueError):
    """The request itself is wrong (repo id, subfolder, revision, options); nothing was fetched.

    :ivar subfolder: the subfolder that was refused.
    :ivar variable: the environment variable whose value was refused.
    """

    _FACTS = (*HubPrefetchError._FACTS, "subfolder", "variable")

    def __init__(
        self,
        message: str,
        *,
        subfolder: str | None = None,
        variable: str | None = None,
        **common: Unpack[CommonFacts],
    ) -> None:
        super().__init__(message, **common)
        self.subfolder = subfolder
        self.variable = variable


class UnknownSubfolderError(InvalidRequestError):
    """Requested subfolders (or pipeline components) have no files at the resolved commit.

    :ivar subfolders: the unknown names.
    """

    _FACTS = (*InvalidRequestError._FACTS, "subfolders")

    def __init__(self, message: str, *, subfolders: Sequence[str] = (), **rest: Unpack[RequestFacts]) -> None:
        super().__init__(message, **rest)
        self.subfolders = tuple(subfolders)


class HubAccessError(HubPrefetchError, OSError):
    """The Hub answered definitively: retrying cannot help.

    :ivar path: the file in the repo, when one file was refused.
    :ivar status: the HTTP status, when there was one.
    """

    _FACTS = (*HubPrefetchError._FACTS, "path", "status")

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        status: int | None = None,
        **common: Unpack[CommonFacts],
    ) -> None:
        super().__init__(message, **common)
        self.path = path
        self.status = status


class RepoNotFound(HubAccessError):
    """No such repository (or no access to a private one)."""


class RevisionNotFound(HubAccessError):
    """The repository exists but not that branch, tag or commit."""


class EntryNotFound(HubAccessError):
    """The repository exists at that commit but not that file."""


class GatedRepoError(HubAccessError):
    """Access needs a token that was not sent or was refused."""


class CorruptRepoFileError(HubAccessError):
    """A file in the repo itself (an ``*.index.json``, ``model_index.json``) is invalid; ``path`` names it."""


class HubUnavailableError(HubPrefetchError, OSError):
    """The Hub stayed unreachable or overloaded through every allowed retry.

    :ivar attempts: how many attempts were made.
    """

    _FACTS = (*HubPrefetchError._FACTS, "attempts")

    def __init__(self, message: str, *, attempts: int | None = None, **common: Unpack[CommonFacts]) -> None:
        super().__init__(message, **common)
        self.attempts = attempts


class OfflineCacheMissError(HubPrefetchError, OSError):
    """Offline mode (``HF_HUB_OFFLINE`` or ``local_files_only``) and the cache cannot serve the load.

    :ivar missing: the files the cache lacks, when known.
    """

    _FACTS = (*HubPrefetchError._FACTS, "missing")

    def __init__(self, message: str, *, missing: Sequence[str] = (), **common: Unpack[CommonFacts]) -> None:
        super().__init__(message, **common)
        self.missing = tuple(missing) or None


class CacheWriteError(HubPrefetchError, OSError):
    """The cache cannot be written (read-only, full disk, permissions); nothing half-written is kept.

    :ivar path: what could not be written.
    :ivar errno: the OS error number, when there was one.
    :ivar cached_commit: for a read-only cache, the commit it holds ...
    :ivar current_commit: ... when the revision now points elsewhere.
    """

    _FACTS = (*HubPrefetchError._FACTS, "path", "errno", "cached_commit", "current_commit")

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        errno: int | None = None,
        cached_commit: str | None = None,
        current_commit: str | None = None,
        **common: Unpack[CommonFacts],
    ) -> None:
        super().__init__(message, **common)
        self.path = path
        self.errno = errno
        self.cached_commit = cached_commit
        self.current_commit = current_commit


class IncompleteSnapshotError(HubPrefetchError, OSError):
    """A snapshot is still incomplete or corrupt after repair.

    :ivar problems: one ``"<path>: <kind>"`` line per file.
    """

    _FACTS = (*HubPrefetchError._FACTS, "problems")

    def __init__(self, message: str, *, problems: Sequence[str] = (), **common: Unpack[CommonFacts]) -> None:
        super().__init__(message, **common)
        self.problems = tuple(problems)


class ChecksumMismatchError(IncompleteSnapshotError):
    """A downloaded file's digest differs from the one the Hub's listing gives, on a re-fetch too
    (a proxy or disk that corrupts bytes, or a repo whose listing and content disagree); nothing of it
    was published.

    :ivar path: the file in the repo.
    :ivar expected: the listing's digest (sha256 for LFS files, git blob sha1 otherwise).
    :ivar received: the digest of the bytes that arrived.
    """

    _FACTS = (*IncompleteSnapshotError._FACTS, "path", "expected", "received")

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        expected: str | None = None,
        received: str | None = None,
        problems: Sequence[str] = (),
        **common: Unpack[CommonFacts],
    ) -> None:
        super().__init__(message, problems=problems, **common)
        self.path = path
        self.expected = expected
        self.received = received


class LockTimeout(HubPrefetchError, TimeoutError):
    """The repo lock (or a distributed leader) was not done within the caller's timeout.

    :ivar lock_path: the lock file waited on.
    :ivar holder: the holder's owner record, when one could be read.
    :ivar waited_s: seconds waited.
    :ivar backend: ``flock`` or ``lease``.
    :ivar leader_rank: in ``prefetch_distributed``, the rank whose download was waited for.
    """

    _FACTS = (*HubPrefetchError._FACTS, "lock_path", "holder", "waited_s", "backend", "leader_rank")

    def __init__(
        self,
        message: str,
        *,
        lock_path: str | None = None,
        holder: dict[str, Any] | None = None,
        waited_s: float | None = None,
        backend: str | None = None,
        leader_rank: int | None = None,
        **common: Unpack[CommonFacts],
    ) -> None:
        super().__init__(message, **common)
        self.lock_path = lock_path
        self.holder = holder
        self.waited_s = waited_s
        self.backend = backend
        self.leader_rank = leader_rank


class LockLostError(HubPrefetchError, OSError):
    """The repo lock was taken from this holder (its lease went silent past its TTL, or an operator
    deleted the lock file) before it finished, more times than it re-enters as a waiter.

    A holder that loses the lock stops publishing at once and waits again; this error means that kept
    happening (a holder frozen again and again, e.g. by a flapping network filesystem).

    :ivar lock_path: the lock file.
    :ivar epoch: the lease epoch that was lost (0 for ``flock``).
    """

    _FACTS = (*HubPrefetchError._FACTS, "lock_path", "epoch")

    def __init__(
        self,
        message: str,
        *,
        lock_path: str | None = None,
        epoch: int | None = None,
        **common: Unpack[CommonFacts],
    ) -> None:
        super().__init__(message, **common)
        self.lock_path = lock_path
        self.epoch = epoch


class RemoteError(HubPrefetchError):
    """An error of a type hub-prefetch does not know, raised in another process and carried here.

    :ivar error_type: the original exception's class name.
    """

    _FACTS = (*HubPrefetchError._FACTS, "error_type")

    def __init__(self, message: str, *, error_type: str | None = None, **common: Unpack[CommonFacts]) -> None:
        super().__init__(message, **common)
        self.error_type = error_type


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def to_json(exc: BaseException) -> dict[str, Any]:
    """A JSON form of ``exc`` that :func:`from_json` turns back into the same class, message and facts.

    Any exception may be given; one that is not a :class:`HubPrefetchError` comes back as a
    :class:`RemoteError` naming its type.
    """
    typed = isinstance(exc, HubPrefetchError)
    facts = exc.facts if isinstance(exc, HubPrefetchError) else {}
    return {
        "type": type(exc).__name__,
        "typed": typed,
        "message": exc.message if isinstance(exc, HubPrefetchError) else str(exc),
        "facts": {k: list(v) if isinstance(v, tuple) else v for k, v in facts.items() if _jsonable(v)},
    }


def from_json(data: dict[str, Any], **facts: Any) -> HubPrefetchError:
    """The error :func:`to_json` described, with ``facts`` added (e.g. ``origin_rank``)."""
    cls = globals().get(str(data.get("type"))) if data.get("typed") else None
    message = str(data.get("message", ""))
    merged = {**dict(data.get("facts") or {}), **facts}
    if isinstance(cls, type) and issubclass(cls, HubPrefetchError):
        known = {k: v for k, v in merged.items() if k in cls._FACTS}
        try:
            return cls(message, **known)
        except TypeError:
            pass  # written by another version with other facts: keep the message and the type name
    known = {k: v for k, v in merged.items() if k in RemoteError._FACTS}
    return RemoteError(f"{data.get('type')}: {message}", error_type=str(data.get("type")), **known)
