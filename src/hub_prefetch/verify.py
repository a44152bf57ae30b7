"""Check a snapshot against the Hub's listing of its commit, and find temp files of dead writers.

Cheap checks (a ``stat`` per file) catch missing files, dangling links and truncated or padded
blobs; the deep mode hashes content (sha256 for LFS files, git blob sha1 for the rest) and
catches a same-size flipped byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from .cache import blobs_dir, repo_folder
from .temps import Sightings

__all__ = ["ExpectedFile", "Problem", "VerifyReport", "check_files", "clean_orphan_temps", "file_digest_ok"]

logger = logging.getLogger("hub_prefetch.verify")

ProblemKind = Literal["missing", "dangling", "size", "hash"]
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ExpectedFile:
    """What the Hub says one file of a commit is."""

    path: str
    size: int | None
    sha256: str | None = None
    blob_id: str | None = None

    @property
    def has_digest(self) -> bool:
        """Can its content be checked (sha256, or a git blob id with the size it hashes)?"""
        return bool(self.sha256 or (self.blob_id and self.size is not None))

    def to_json(self) -> list[Any]:
        return [self.size, self.sha256, self.blob_id]

    @classmethod
    def from_json(cls, path: str, raw: list[Any]) -> ExpectedFile:
        size, sha256, blob_id = [*list(raw), None, None, None][:3]
        return cls(path, size, sha256, blob_id)


@dataclass(frozen=True)
class Problem:
    path: str
    kind: ProblemKind
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    """The result of checking a snapshot: ``ok`` when ``problems`` is empty."""

    repo_id: str
    commit: str
    snapshot: str
    files: tuple[str, ...]
    deep: bool
    problems: tuple[Problem, ...] = ()
    repaired: tuple[str, ...] = field(default=())
    #: files the Hub (or a mirror) gave no digest for: checked by size only, or (no size) not at all
    unchecked: tuple[str, ...] = ()
    unsized: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain data, plus ``ok`` (what ``hub-prefetch verify --json`` prints)."""
        data = asdict(self)
        data["ok"] = self.ok
        return data

    def __str__(self) -> str:
        head = f"{self.repo_id}@{self.commit[:12]}: {len(self.files)} files"
        caveat = ""
        if self.unchecked:
            sized = len(self.unchecked) - len(self.unsized)
            parts = [f"{sized} size-checked only"] if sized else []
            parts += [f"{len(self.unsized)} unverified"] if self.unsized else []
            caveat = f" ({', '.join(parts)}: the Hub gave no digest)"
        if self.ok:
            checked = len(self.files) - len(self.unchecked)
            if not checked:
                return f"{head}, none verified{caveat}"
            return f"{head}, {'all ' if not caveat else ''}verified{' (sha256)' if self.deep else ''}{caveat}"
        lines = [f"{head}, {len(self.problems)} problem(s){caveat}:"]
        lines += [f"  {p.kind:8s} {p.path}: {p.detail}" for p in self.problems]
        return "\n".join(lines)


def _git_blob_sha1(path: Path, size: int) -> str:
    digest = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_digest_ok(path: Path, expected: ExpectedFile) -> bool | None:
    """True/False when a hash is known for the file, None when there is nothing to compare."""
    if expected.sha256:
        return _sha256(path) == expected.sha256
    if expected.blob_id and expected.size is not None:
        return _git_blob_sha1(path, expected.size) == expected.blob_id
    return None


def check_file(snapshot: Path, expected: ExpectedFile, *, deep: bool) -> Problem | None:
    target = snapshot / expected.path
    try:
        link = os.lstat(target)
    except FileNotFoundError:
        return Problem(expected.path, "missing", "not in the snapshot")
    except NotADirectoryError:
        return Problem(expected.path, "missing", "a parent is not a folder")
    try:
        size = os.stat(target).st_size
    except FileNotFoundError:
        return Problem(expected.path, "dangling", f"link to a missing blob ({os.readlink(target)})")
    del link
    if expected.size is not None and size != expected.size:
        return Problem(expected.path, "size", f"{size} bytes, the Hub says {expected.size}")
    if deep and file_digest_ok(target, expected) is False:
        return Problem(expected.path, "hash", "content differs from the Hub's hash")
    return None


def check_files(snapshot: Path, expected: Iterable[ExpectedFile], *, deep: bool) -> list[Problem]:
    return [p for e in expected if (p := check_file(snapshot, e, deep=deep)) is not None]


def sizes_hold(snapshot: Path, sizes: Mapping[str, int]) -> bool:
    """The warm-path check: every file is there (through its link) with the recorded size.

    One ``stat`` per file, relative to the snapshot folder opened once: at hundreds of files the path
    lookups from the root, or a ``Path`` built per file, would cost more than the checks themselves.
    """
    try:
        fd = os.open(snapshot, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    stat_ = os.stat
    try:
        return all(stat_(path, dir_fd=fd).st_size == size for path, size in sizes.items())
    except OSError:
        return False
    finally:
        os.close(fd)


def clean_orphan_temps(
    cache_dir: Path,
    repo_type: str,
    repo_id: str,
    *,
    min_age_s: float = 0.0,
    writers_gone: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> list[Path]:
    """Remove ``*.incomplete`` files in ``blobs/`` whose writer is gone; return what was removed.

    huggingface_hub holds ``.locks/<repo>/<etag>.lock`` while it writes ``<etag>[.<uuid>].incomplete``:
    if we can take that lock without waiting, nobody is writing, and the temp file is an orphan.
    ``min_age_s`` adds a second guard where kernel locks may not be honoured: the file must also have
    been seen unchanged (size, mtime, inode) for that long on this host's monotonic ``clock``
    (:class:`~hub_prefetch.temps.Sightings`), so at least two looks apart. Its mtime is never compared
    with our clock: another host or the file server set it. ``writers_gone``: the caller took the repo
    lease over from a holder judged dead (the writer's lease is the evidence), so a temp file whose blob
    lock is free, or unusable, goes at the first look.
    """
    removed: list[Path] = []
    folder = blobs_dir(cache_dir, repo_type, repo_id)
    try:
        temps = [p for p in folder.iterdir() if p.name.endswith(".incomplete")]
    except OSError:
        return removed
    sightings = Sightings.of_repo(cache_dir, repo_type, repo_id, clock=clock) if min_age_s else None

    def quiet_long_enough(temp: Path) -> bool:
        if sightings is None:
            return True
        if writers_gone:
            sightings.quiet_for(temp)  # still recorded, for the looks to come
            return True
        quiet = sightings.quiet_for(temp)
        return quiet is not None and quiet >= min_age_s

    locks = cache_dir / ".locks" / repo_folder(cache_dir, repo_type, repo_id).name
    for temp in temps:
        etag = temp.name.split(".", 1)[0]
        lock = FileLock(str(locks / f"{etag}.lock"), timeout=0)
        try:
            with lock, contextlib.suppress(FileNotFoundError):
                if not quiet_long_enough(temp):
                    continue
                temp.unlink()
                removed.append(temp)
        except Timeout:
            logger.debug("%s is being written by a live process; left alone", temp)
        except OSError as exc:
            # The blob lock itself is unusable (flock raises here): only quiet can tell an orphan.
            with contextlib.suppress(OSError):
                if (min_age_s or writers_gone) and quiet_long_enough(temp):
                    temp.unlink()
                    removed.append(temp)
                    continue
            logger.debug("cannot check %s: %s", temp, exc)
    if sightings is not None:
        sightings.save(t.name for t in temps if t not in removed)
    if removed:
        logger.info("removed %d orphan temp file(s) of dead writers in %s", len(removed), folder)
    return removed
