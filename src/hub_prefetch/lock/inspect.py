"""Every repo lock in a cache, its holder and whether it is stale: what ``hub-prefetch locks`` shows.

A ``flock`` lock file is tested with a shared, non-blocking :func:`~hub_prefetch.lock.flock.try_flock`
(the attempt the lock itself makes), so a listing never waits and never takes a lock from anyone.
A lease is judged as a waiter would judge it, except that a listing has seen the file only once: it
compares the holder's last heartbeat with this host's wall clock.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..cache import lock_dir
from ..errors import CacheWriteError
from ..settings import Settings
from .flock import try_flock, unlock
from .identity import NOFOLLOW, HolderInfo, HostIdentity, dead_reason, decode_record, read_nofollow

__all__ = ["LockInfo", "list_locks"]


@dataclass(frozen=True)
class LockInfo:
    """One lock file, as ``hub-prefetch locks`` shows it."""

    path: Path
    key: str
    holder: HolderInfo | None
    backend: str
    stale: bool
    reason: str
    repo_id: str = ""
    repo_type: str = ""
    revision: str = ""


def list_locks(
    cache_dir: str | Path, *, host_id: str | None = None, settings: Settings | None = None
) -> list[LockInfo]:
    """Every repo lock file in a cache with its holder and whether it is stale (``hub-prefetch locks``).

    ``host_id`` names this host as lock records do (default: ``settings.host_id``, where ``settings``
    defaults to :meth:`Settings.from_env`).
    """
    folder = lock_dir(Path(cache_dir).expanduser())
    me = HostIdentity.local(host_id or (settings if settings is not None else Settings.from_env()).host_id)
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CacheWriteError(f"cannot list {folder}: {exc.strerror or exc}", path=str(folder)) from exc
    result = []
    for name in names:
        path = folder / name
        if name.endswith(".lock") and not name.startswith("."):
            result.append(_inspect_flock(path, me))
        elif name.endswith(".lease") and not name.startswith("."):
            result.append(_inspect_lease(path, me))
    return result


def _key_of(raw: bytes) -> tuple[str, str, str, str]:
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    repo_id, repo_type, revision = (str(data.get(k, "")) for k in ("repo_id", "repo_type", "revision"))
    key = f"{repo_type}:{repo_id}@{revision}" if repo_id else "?"
    return key, repo_id, repo_type, revision


def _inspect_flock(path: Path, me: HostIdentity) -> LockInfo:
    found = read_nofollow(path)
    raw = found[0] if found else b""
    key, repo_id, repo_type, revision = _key_of(raw)
    info = decode_record(raw)
    held = _flock_is_held(path)
    if held is False:
        reason = "free" if info is None else f"free: {info.describe()} exited without releasing"
        info = None
    elif held is None:
        reason = "unknown: could not test the flock"
    else:
        reason = "held" if info is not None else "held by a process that recorded no owner"
    return LockInfo(path, key, info, "flock", False, reason, repo_id, repo_type, revision)


def _flock_is_held(path: Path) -> bool | None:
    """True when someone holds the ``flock``, False when free, None when it cannot be tested."""
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            free = try_flock(fd, shared=True)
        except OSError:
            return None
        if free:
            unlock(fd)
        return not free
    finally:
        os.close(fd)


def _inspect_lease(path: Path, me: HostIdentity) -> LockInfo:
    found = read_nofollow(path)
    raw = found[0] if found else b""
    key, repo_id, repo_type, revision = _key_of(raw)
    info = decode_record(raw)
    if info is None:
        return LockInfo(
            path, key, None, "lease", True, "unreadable lease record", repo_id, repo_type, revision
        )
    dead = dead_reason(info, me)
    if dead:
        return LockInfo(path, key, info, "lease", True, dead, repo_id, repo_type, revision)
    silent = time.time() - info.heartbeat_at
    if info.ttl and silent > info.ttl:
        reason = f"heartbeat silent for {silent:.0f} s by this host's clock (ttl {info.ttl:g} s)"
        return LockInfo(path, key, info, "lease", True, reason, repo_id, repo_type, revision)
    return LockInfo(
        path, key, info, "lease", False, f"held, heartbeat {silent:.0f} s ago", repo_id, repo_type, revision
    )
