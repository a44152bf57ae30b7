"""Paths of the huggingface_hub cache layout, input validation, and safe small-file I/O.

Layout (huggingface_hub's, plus our ``.hub_prefetch`` side folder and lock folder)::

    <cache>/
      .locks/<repo-folder>/<etag>.lock          huggingface_hub's per-blob locks
      .locks/hub_prefetch/<key-hash>.lock       our repo locks (name = hash, never a raw id)
      models--org--name/
        blobs/<etag>                            content, one per distinct file
        blobs/<etag>[.<uuid>].incomplete        a download in progress (or orphaned)
        refs/<revision>                         branch/tag -> commit
        snapshots/<commit>/<path>               links into blobs/
        .no_exist/<commit>/<path>               known-missing optional files
        .hub_prefetch/stamps/<commit>/<sel>.json    verified selection for a commit
        .hub_prefetch/revisions/<hash>.json         branch -> commit, with the time it was asked
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import CacheWriteError, InvalidRequestError

__all__ = [
    "REPO_TYPES",
    "atomic_write_json",
    "blobs_dir",
    "is_commit_hash",
    "key_hash",
    "listing_path",
    "lock_dir",
    "normalize_subfolder",
    "read_json",
    "ref_path",
    "repo_folder",
    "revision_record_path",
    "snapshot_dir",
    "stamp_path",
    "validate_repo_id",
    "validate_revision",
]

logger = logging.getLogger("hub_prefetch.cache")

REPO_TYPES = ("model", "dataset", "space")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_REPO_PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_LAYOUT_PART_RE = re.compile(r"^(?:(?:models|datasets|spaces)--.+|\.locks)$")
#: Group may read and write, others may read; our files live in a cache a team may share.
SHARED_FILE_MODE = 0o664
SHARED_DIR_MODE = 0o2775
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def is_commit_hash(revision: str) -> bool:
    return bool(_COMMIT_RE.fullmatch(revision))


def validate_repo_id(repo_id: object) -> str:
    """Return ``repo_id`` if it names a Hub repo; raise :class:`InvalidRequestError` otherwise.

    Stricter than huggingface_hub on purpose: a path-like id (``../x``, ``/abs``, ``a\\b``)
    is rejected before anything touches the disk or the network.
    """
    if not isinstance(repo_id, str):
        raise InvalidRequestError(f"repo id must be a string, not {type(repo_id).__name__}")
    parts = repo_id.split("/")
    problem = None
    if not 1 <= len(repo_id) <= 96:
        problem = "must be 1 to 96 characters"
    elif len(parts) > 2:
        problem = "must be 'name' or 'namespace/name'"
    elif any(not _REPO_PART_RE.fullmatch(p) for p in parts):
        problem = "may hold only letters, digits, '-', '_' and '.', and no part may start with '.' or '-'"
    elif "--" in repo_id or ".." in repo_id:
        problem = "may not contain '--' or '..'"
    elif repo_id.endswith(".git"):
        problem = "may not end with '.git'"
    if problem:
        raise InvalidRequestError(f"invalid repo id {repo_id!r}: {problem}", repo_id=repo_id)
    return repo_id


def validate_revision(revision: object) -> str:
    if not isinstance(revision, str) or not revision:
        raise InvalidRequestError(f"invalid revision {revision!r}")
    parts = revision.split("/")
    if (
        revision.startswith("/")
        or "\\" in revision
        or "\0" in revision
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise InvalidRequestError(f"invalid revision {revision!r}: path-like", revision=revision)
    return revision


def normalize_subfolder(subfolder: object) -> str:
    """``""`` for the repo root, else a clean relative POSIX path; traversal is refused."""
    if subfolder is None:
        return ""
    if not isinstance(subfolder, str):
        raise InvalidRequestError(f"subfolder must be a string, not {type(subfolder).__name__}")
    if "\\" in subfolder or "\0" in subfolder or subfolder.startswith("/"):
        raise InvalidRequestError(f"invalid subfolder {subfolder!r}: path-like", subfolder=subfolder)
    parts = [p for p in subfolder.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise InvalidRequestError(
            f"invalid subfolder {subfolder!r}: '..' is not allowed", subfolder=subfolder
        )
    return str(PurePosixPath(*parts)) if parts else ""


def key_hash(*parts: object) -> str:
    """A short stable name for a tuple of facts: file names never embed a raw repo id."""
    raw = "\0".join(str(p) for p in parts).encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()[:32]


def repo_folder(cache_dir: Path, repo_type: str, repo_id: str) -> Path:
    return cache_dir / "--".join([f"{repo_type}s", *repo_id.split("/")])


def snapshot_dir(cache_dir: Path, repo_type: str, repo_id: str, commit: str) -> Path:
    return repo_folder(cache_dir, repo_type, repo_id) / "snapshots" / commit


def blobs_dir(cache_dir: Path, repo_type: str, repo_id: str) -> Path:
    return repo_folder(cache_dir, repo_type, repo_id) / "blobs"


def ref_path(cache_dir: Path, repo_type: str, repo_id: str, revision: str) -> Path:
    return repo_folder(cache_dir, repo_type, repo_id) / "refs" / revision


def lock_dir(cache_dir: Path) -> Path:
    return cache_dir / ".locks" / "hub_prefetch"


def _side_dir(cache_dir: Path, repo_type: str, repo_id: str) -> Path:
    return repo_folder(cache_dir, repo_type, repo_id) / ".hub_prefetch"


def stamp_path(cache_dir: Path, repo_type: str, repo_id: str, commit: str, selection_key: str) -> Path:
    return _side_dir(cache_dir, repo_type, repo_id) / "stamps" / commit / f"{selection_key}.json"


def listing_path(cache_dir: Path, repo_type: str, repo_id: str, commit: str) -> Path:
    return _side_dir(cache_dir, repo_type, repo_id) / "listings" / f"{commit}.json"


def revision_record_path(cache_dir: Path, repo_type: str, repo_id: str, revision: str) -> Path:
    return _side_dir(cache_dir, repo_type, repo_id) / "revisions" / f"{key_hash(revision)}.json"


def _in_layout(path: Path) -> bool:
    """Is ``path`` inside a repo folder or the lock folder of a cache (never the cache's own parents)?"""
    return any(_LAYOUT_PART_RE.match(part) for part in path.parts)


def ensure_dir(path: Path) -> None:
    """Create ``path`` (group-shareable); a read-only or full cache becomes a typed error.

    Folders created on the way get the shared mode too when they belong to the cache layout: with
    ``mkdir -p`` alone they would follow the umask, and a teammate could not add a stamp beside ours.
    """
    created = []
    probe = path.parent
    while not os.path.lexists(probe) and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheWriteError(
            f"cannot create {path}: {exc.strerror or exc}", path=str(path), errno=exc.errno
        ) from exc
    for folder in [*(c for c in reversed(created) if _in_layout(c)), path]:
        _share_dir(folder)


def _share_dir(folder: Path) -> None:
    """Give a folder the shared mode; a link in its place is left alone, never followed."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
    except OSError:
        return  # a planted link (ELOOP / ENOTDIR), or gone: nothing of ours to change
    try:
        if os.fstat(fd).st_mode & 0o7777 != SHARED_DIR_MODE:
            os.fchmod(fd, SHARED_DIR_MODE)
    except OSError:
        pass  # another user's folder: theirs to share
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file beside ``path`` + fsync + ``os.replace``; never follows a symlink."""
    ensure_dir(path.parent)
    fd = -1
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.write(fd, data)
        os.fchmod(fd, SHARED_FILE_MODE)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        # os.replace swaps the directory entry itself: a symlink planted at `path` is replaced,
        # never followed.
        os.replace(tmp, path)
        tmp = ""
    except OSError as exc:
        raise CacheWriteError(
            f"cannot write {path}: {exc.strerror or exc}", path=str(path), errno=exc.errno
        ) from exc
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, sort_keys=True, indent=1).encode())


def read_bytes_nofollow(path: Path) -> bytes | None:
    """The file's bytes, or None if absent; a symlink in its place is treated as absent."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("ignoring %s: %s", path, exc.strerror or exc)
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_json(path: Path, *, version: int | None = None) -> dict[str, Any] | None:
    """A JSON object side-file, or None when absent; a corrupt one is treated as absent, with a warning."""
    raw = read_bytes_nofollow(path)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        logger.warning("ignoring corrupt %s", path)
        return None
    if not isinstance(data, dict) or (version is not None and data.get("version") != version):
        logger.warning("ignoring %s: unexpected format", path)
        return None
    return data


def iter_files(root: Path) -> Iterable[Path]:
    """Every non-directory entry below ``root`` (links included, not followed)."""
    if not root.is_dir():
        return
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            yield Path(dirpath) / name
