"""The strict entry points: :func:`prefetch`, :func:`verify` and :func:`repair` (typed errors)."""

from __future__ import annotations

import os
from collections.abc import Iterable

from .. import errors
from ..settings import Settings
from ..verify import Problem, VerifyReport, check_file, check_files
from .flow import run, select
from .request import Request
from .result import PrefetchResult
from .sidefiles import fetch_listing, guessed_index, known_commit, read_listing

__all__ = ["is_local_path", "prefetch", "repair", "verify"]


def is_local_path(model: object) -> bool:
    """Whether ``model`` names a local folder (loaded as it is, never prefetched)."""
    return isinstance(model, (str, os.PathLike)) and os.path.isdir(os.fspath(model))


def prefetch(
    model: str,
    subfolders: Iterable[str] | str | None = None,
    *,
    revision: str | None = None,
    repo_type: str | None = None,
    variant: str | None = None,
    all_files: bool = False,
    include_root_metadata: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool | None = None,
    deep: bool | None = None,
    settings: Settings | None = None,
    lock_timeout: float | None = None,
) -> PrefetchResult:
    """Materialise and verify what loading ``subfolders`` of ``model`` needs; raise typed errors.

    ``subfolders=None`` means the repo root. Returns the commit and snapshot path to load from.
    ``settings`` replaces the environment read at call time; ``cache_dir`` and ``lock_timeout``
    still win over it.
    """
    req = Request.build(
        model,
        subfolders,
        revision=revision,
        repo_type=repo_type,
        variant=variant,
        all_files=all_files,
        include_root_metadata=include_root_metadata,
        cache_dir=cache_dir,
        token=token,
        settings=settings,
        lock_timeout=lock_timeout,
    )
    return run(req, local_files_only=bool(local_files_only), deep=deep)


def verify(
    model: str,
    subfolders: Iterable[str] | str | None = None,
    *,
    revision: str | None = None,
    repo_type: str | None = None,
    variant: str | None = None,
    all_files: bool = False,
    include_root_metadata: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    deep: bool = False,
    settings: Settings | None = None,
) -> VerifyReport:
    """Report what is missing, truncated, corrupt (``deep``) or dangling; download nothing.

    Uses the listing recorded at download time; asks the Hub once only when there is none and
    not offline.
    """
    req = Request.build(
        model,
        subfolders,
        revision=revision,
        repo_type=repo_type,
        variant=variant,
        all_files=all_files,
        include_root_metadata=include_root_metadata,
        cache_dir=cache_dir,
        token=token,
        settings=settings,
    )
    return _verify(req, deep=deep)


def _verify(req: Request, *, deep: bool) -> VerifyReport:
    commit = known_commit(req, any_age=True)
    listing = read_listing(req, commit) if commit else None
    if listing is None or commit is None:
        if req.settings.offline:
            raise errors.OfflineCacheMissError(f"{req.label}: offline and nothing recorded to verify against")
        commit, listing = fetch_listing(req, commit or req.revision)
    snapshot = req.snapshot(commit)
    missing_index: list[Problem] = []

    def read_local(path: str) -> bytes:
        # An index is hashed even in a quick check: a damaged one would otherwise be blamed on the repo.
        problem = check_file(snapshot, listing[path], deep=True)
        if problem is None:
            try:
                return (snapshot / path).read_bytes()
            except OSError as exc:
                problem = Problem(path, "missing", f"unreadable: {exc.strerror or exc}")
        # A damaged local index cannot say which shards it names: report it, and check the shards
        # its name implies, so the report is whole and `repair` knows what to fetch.
        missing_index.append(problem)
        return guessed_index(path, listing)

    selection = select(req, listing, read_local)
    problems = missing_index + [
        p
        for p in check_files(snapshot, [listing[f] for f in selection.files], deep=deep)
        if p not in missing_index
    ]
    return VerifyReport(
        repo_id=req.repo_id,
        commit=commit,
        snapshot=str(snapshot),
        files=selection.files,
        deep=deep,
        problems=tuple(problems),
        unchecked=tuple(f for f in selection.files if not listing[f].has_digest),
        unsized=tuple(f for f in selection.files if listing[f].size is None),
    )


def repair(
    model: str,
    subfolders: Iterable[str] | str | None = None,
    *,
    revision: str | None = None,
    repo_type: str | None = None,
    variant: str | None = None,
    all_files: bool = False,
    include_root_metadata: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    deep: bool = True,
    settings: Settings | None = None,
    lock_timeout: float | None = None,
) -> PrefetchResult:
    """Check every selected file (sha256 when ``deep``) under the lock and re-fetch exactly the bad ones."""
    req = Request.build(
        model,
        subfolders,
        revision=revision,
        repo_type=repo_type,
        variant=variant,
        all_files=all_files,
        include_root_metadata=include_root_metadata,
        cache_dir=cache_dir,
        token=token,
        settings=settings,
        lock_timeout=lock_timeout,
    )
    return run(req, deep=deep, force_check=True)
