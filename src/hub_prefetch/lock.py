"""A repo lock that holds on every filesystem.

``RepoLock(cache_dir, repo_id, repo_type=..., revision=...)`` is keyed on (cache folder, repo type,
repo id, revision). Its file lives in the cache's own lock folder, ``<cache>/.locks/hub_prefetch/``,
named by a hash of (repo type, repo id, revision): never a path built from a raw repo id, never
``/tmp``. The cache folder is part of the key by location rather than by hashing its path, so hosts
that mount one shared cache at different paths still exclude each other.

Backends (``HUB_PREFETCH_LOCK=auto|flock|lease``, or ``backend=``):

* ``flock`` on ``<hash>.lock`` where a probe shows it excludes (local filesystems). The kernel drops
  it when the holder dies, so a crashed holder is succeeded at once. The holder writes its owner
  record into the file for :meth:`RepoLock.holder` and ``hub-prefetch locks``.
* ``lease`` on ``<hash>.lease`` where ``flock`` raises, silently does nothing, or cannot exclude
  other hosts (NFS, Lustre, GPFS, CIFS, FUSE, ...). See :mod:`hub_prefetch._lease` for the protocol:
  heartbeat every TTL/3, a dead holder on this host is taken over at once, one elsewhere after its
  heartbeat stayed silent for its TTL, a live holder never.

All contenders for one cache must use the same backend; ``auto`` guarantees that for every process
that sees the folder through the same kind of mount.

Waiting has no default timeout (a live holder may download for hours); ``timeout=`` or
``HUB_PREFETCH_LOCK_TIMEOUT`` bounds it with :class:`~hub_prefetch.errors.LockTimeout`. While waiting,
``hub_prefetch.lock`` logs "waiting for <repo>@<revision>: held by <host>:<pid> for 42 s (lease)"
every ``HUB_PREFETCH_WAIT_LOG_INTERVAL`` seconds.

Threads and re-entry: within one process, holders of one key are serialised by an in-process gate
first, so threads exclude each other on either backend and hand over without polling. A thread
that acquires a key it already holds (through this or any other ``RepoLock`` of the same key)
re-enters: the hold is counted and the lock is released when the last level is released. An
asyncio task re-enters the same way (``async with``); a different task, even one that happens to
run on the same executor thread, waits. After ``fork`` a child holds nothing it inherited.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import random
import secrets
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

from ._fsprobe import clear_probe_cache, probe_backend
from ._lease import HolderInfo, HostIdentity, Lease, dead_reason, decode_record, encode_record, read_nofollow
from ._lease import process_start_time as _process_start_time
from .cache import SHARED_FILE_MODE, ensure_dir, key_hash, lock_dir
from .errors import CacheWriteError, InvalidRequestError, LockTimeout
from .settings import Settings

__all__ = [
    "HolderInfo",
    "LockInfo",
    "RepoLock",
    "clear_probe_cache",
    "list_locks",
    "probe_backend",
    "repo_lock",
]

logger = logging.getLogger("hub_prefetch.lock")

BackendName = Literal["auto", "flock", "lease"]
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_CONTENDED = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES}
_FLOCK_POLL_MAX = 0.05
_LEASE_POLL_MAX = 0.2
_GATE_SLICE = 0.1


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


class _Cancelled(Exception):
    pass


class _Flag(Protocol):
    def is_set(self) -> bool: ...


class _Until:
    """A cancel flag that is set once a predicate holds."""

    def __init__(self, done: Callable[[], bool]) -> None:
        self._done = done

    def is_set(self) -> bool:
        return self._done()


# -- the flock backend ------------------------------------------------------------------------------
class _FlockHold:
    """One descriptor on ``<hash>.lock``; kept open across attempts of one acquisition."""

    def __init__(self, path: Path, record: HolderInfo) -> None:
        self.path = path
        self.record = record
        self._open()

    def _open(self) -> None:
        path = self.path
        self.writable = True
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, SHARED_FILE_MODE)
        except PermissionError:
            # Another user's lock file without group write: flock works on a read-only descriptor.
            self.fd = self._open_readonly()
            self.writable = False
        except OSError as exc:
            raise CacheWriteError(f"cannot open lock {path}: {exc.strerror or exc}", path=str(path)) from exc
        st = os.fstat(self.fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(self.fd)
            raise CacheWriteError(f"lock {path} is not a regular file", path=str(path))
        if st.st_uid == os.geteuid() and st.st_mode & 0o777 != SHARED_FILE_MODE:
            with contextlib.suppress(OSError):
                os.fchmod(self.fd, SHARED_FILE_MODE)  # umask may have dropped group write
        self.ino = (st.st_dev, st.st_ino)

    def _open_readonly(self) -> int:
        try:
            return os.open(self.path, os.O_RDONLY | _NOFOLLOW)
        except OSError as exc:
            raise CacheWriteError(
                f"cannot open lock {self.path}: {exc.strerror or exc}", path=str(self.path)
            ) from exc

    def try_acquire(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _CONTENDED:
                return False
            code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            raise CacheWriteError(
                f"flock on {self.path} failed with {code}; set HUB_PREFETCH_LOCK=lease (or auto)",
                path=str(self.path),
            ) from exc
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self.ino:
            # Someone removed or replaced the file while we waited: a lock on an orphan inode excludes
            # nobody. Start over on whatever the name points to now.
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self._open()
            return False
        now = time.time()
        self.record = replace(self.record, acquired_at=now, heartbeat_at=now)
        self._write(encode_record(self.record))
        return True

    def _write(self, data: bytes) -> None:
        if not self.writable:
            return
        try:
            os.pwrite(self.fd, data, 0)
            os.ftruncate(self.fd, len(data))
        except OSError as exc:
            logger.debug("could not record the holder in %s: %s", self.path, exc)

    def release(self) -> None:
        try:
            r = self.record
            self._write(encode_record(r, state="free"))
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)

    def close(self) -> None:
        os.close(self.fd)


# -- the in-process registry ------------------------------------------------------------------------
class _Slot:
    """Per process and lock file: the gate threads queue on, and who holds it how deeply."""

    def __init__(self) -> None:
        self.gate = threading.Lock()
        self.owner: object = None
        self.depth = 0
        self.hold: _FlockHold | Lease | None = None


_slots: dict[str, _Slot] = {}
_slots_lock = threading.Lock()


def _slot(key: str) -> _Slot:
    slot = _slots.get(key)
    if slot is None:
        with _slots_lock:
            slot = _slots.setdefault(key, _Slot())
    return slot


def _after_fork_in_child() -> None:
    global _slots, _slots_lock  # noqa: PLW0603 - the child must not inherit the parent's holds
    for slot in _slots.values():
        if isinstance(slot.hold, _FlockHold):
            # Closing our copy leaves the parent's flock intact; never LOCK_UN, which would drop it.
            with contextlib.suppress(OSError):
                slot.hold.close()
        elif isinstance(slot.hold, Lease):
            slot.hold.abandon()
    _slots = {}
    _slots_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the public lock --------------------------------------------------------------------------------
class RepoLock:
    """An exclusive lock on one (cache, repo type, repo id, revision); a sync and async context manager."""

    def __init__(
        self,
        cache_dir: str | Path,
        repo_id: str,
        *,
        repo_type: str = "model",
        revision: str = "main",
        settings: Settings | None = None,
        backend: BackendName | None = None,
        timeout: float | None = None,
        lease_ttl: float | None = None,
        host_id: str | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir).expanduser()
        self.repo_id, self.repo_type, self.revision = str(repo_id), str(repo_type), str(revision)
        s = settings if settings is not None else Settings.from_env(cache_dir=self.cache_dir)
        self.requested_backend: BackendName = backend or s.lock_backend
        if self.requested_backend not in ("auto", "flock", "lease"):
            raise InvalidRequestError(f"lock backend {backend!r}: expected auto, flock or lease")
        self.timeout = timeout if timeout is not None else s.lock_timeout
        self.lease_ttl = float(lease_ttl if lease_ttl is not None else s.lease_ttl)
        if self.lease_ttl <= 0:
            raise InvalidRequestError(f"lease ttl must be positive, got {self.lease_ttl}")
        self.wait_log_interval = max(float(s.wait_log_interval), 0.01)
        self.identity = HostIdentity.local(host_id or s.host_id)
        digest = key_hash(self.repo_type, self.repo_id, self.revision)
        self.lock_dir = lock_dir(self.cache_dir)
        self.path = self.lock_dir / f"{digest}.lock"
        self.lease_path = self.lock_dir / f"{digest}.lease"
        self.probe_reason = ""
        self._backend: str | None = None
        self._slot_key = ""
        self._depth = 0
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"RepoLock({self.describe()!r}, path={str(self.path)!r}, backend={self._backend or '?'})"

    def describe(self) -> str:
        return f"{self.repo_id}@{self.revision}" + (
            "" if self.repo_type == "model" else f" ({self.repo_type})"
        )

    @property
    def backend(self) -> str:
        """``"flock"`` or ``"lease"``: the backend in use (probes the lock folder on first access)."""
        if self._backend is None:
            ensure_dir(self.lock_dir)
            # Threads of this process queue on one gate per real file, however the cache was spelled.
            self._slot_key = os.path.join(os.path.realpath(self.lock_dir), self.path.name)
            if self.requested_backend == "auto":
                self._backend, self.probe_reason = probe_backend(self.lock_dir)
            else:
                self._backend, self.probe_reason = self.requested_backend, "requested"
        return self._backend

    @property
    def file(self) -> Path:
        """The file that embodies the lock for the backend in use."""
        return self.path if self.backend == "flock" else self.lease_path

    @property
    def is_held(self) -> bool:
        """Whether this object holds the lock (at any depth) in this process."""
        return self._depth > 0 and self._pid == os.getpid()

    # -- records -----------------------------------------------------------------------------------
    def _record(self) -> HolderInfo:
        me = self.identity
        return HolderInfo(
            host=me.host,
            pid=os.getpid(),
            start_time=_own_start_time(),
            token=secrets.token_hex(16),
            acquired_at=0.0,
            heartbeat_at=0.0,
            backend=self.backend,
            repo_id=self.repo_id,
            repo_type=self.repo_type,
            revision=self.revision,
            ttl=self.lease_ttl if self.backend == "lease" else 0.0,
            boot_id=me.boot_id,
            pidns=me.pidns,
        )

    def holder(self) -> HolderInfo | None:
        """Who holds the lock now, from its owner record; None when free (or its holder is dead here)."""
        found = read_nofollow(self.file)
        info = decode_record(found[0]) if found else None
        if info is None or (self.backend == "flock" and dead_reason(info, self.identity)):
            return None
        return info

    # -- acquire / release -------------------------------------------------------------------------
    def acquire(self, timeout: float | None = None) -> RepoLock:
        """Block until held (``timeout`` seconds at most, else this lock's default); return self."""
        self._acquire(timeout, threading.get_ident(), None)
        return self

    def acquire_unless(self, done: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait for the lock, but give up as soon as ``done()`` is true (checked after every failed try).

        True: the lock is held (release it). False: ``done()`` came true first, nothing is held. This
        is how waiters leave together the moment the holder's work is visible, instead of taking the
        lock one after another only to find nothing left to do.
        """
        try:
            self._acquire(timeout, threading.get_ident(), _Until(done))
        except _Cancelled:
            return False
        return True

    def _acquire(self, timeout: float | None, owner: object, cancel: _Flag | None) -> None:
        if self._pid != os.getpid():
            self._depth, self._pid = 0, os.getpid()  # inherited across fork: nothing is ours
        timeout = self.timeout if timeout is None else timeout
        backend = self.backend
        slot = _slot(self._slot_key)
        if slot.owner == owner and slot.depth > 0:
            slot.depth += 1
            self._depth += 1
            return
        start = time.monotonic()
        deadline = None if timeout is None or timeout < 0 else start + timeout
        next_log = start + self.wait_log_interval
        poll_max = _FLOCK_POLL_MAX if backend == "flock" else _LEASE_POLL_MAX
        delay = 0.0005
        gate_held = False
        hold: _FlockHold | Lease | None = None
        logged = False
        try:
            while True:
                now = time.monotonic()
                if not gate_held:
                    remaining = None if deadline is None else max(deadline - now, 0.0)
                    wait = min(_GATE_SLICE, next_log - now, *(() if remaining is None else (remaining,)))
                    gate_held = (
                        slot.gate.acquire(timeout=max(wait, 0.0)) if wait > 0 else slot.gate.acquire(False)
                    )
                    if gate_held:
                        hold = self._new_hold(backend)
                if hold is not None and hold.try_acquire():
                    break
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    self._raise_timeout(start, hold)
                if cancel is not None and cancel.is_set():
                    raise _Cancelled  # noqa: TRY301 - unwinds through the cleanup below
                if now >= next_log or not logged:
                    self._log_wait(start, hold, level=logging.INFO if logged else logging.DEBUG)
                    logged = True
                    if now >= next_log:
                        next_log = now + self.wait_log_interval
                if gate_held:
                    pause = delay * random.uniform(0.5, 1.0)
                    if deadline is not None:
                        pause = min(pause, max(deadline - now, 0.0))
                    time.sleep(max(min(pause, next_log - now), 0.0))
                    delay = min(delay * 2, poll_max)
        except BaseException:
            if isinstance(hold, _FlockHold):
                hold.close()
            if gate_held:
                slot.gate.release()
            raise
        slot.owner, slot.depth, slot.hold = owner, 1, hold
        self._depth += 1
        if logged:
            logger.info("acquired %s after %.1f s (%s)", self.describe(), time.monotonic() - start, backend)

    def _new_hold(self, backend: str) -> _FlockHold | Lease:
        record = self._record()
        if backend == "flock":
            return _FlockHold(self.path, record)
        return Lease(self.lease_path, record, self.identity, self.lease_ttl)

    def _holder_seen(self, hold: _FlockHold | Lease | None) -> HolderInfo | None:
        if isinstance(hold, Lease) and hold.last_seen is not None:
            return hold.last_seen
        return self.holder()

    def _log_wait(self, start: float, hold: _FlockHold | Lease | None, *, level: int) -> None:
        info = self._holder_seen(hold)
        if info is None:
            who = "an unknown holder"
        else:
            held_for = max(time.time() - info.acquired_at, 0.0) if info.acquired_at else 0.0
            who = f"{info.describe()} for {held_for:.0f} s"
        logger.log(
            level,
            "waiting for %s: held by %s (%s); waited %.0f s",
            self.describe(),
            who,
            self.backend,
            time.monotonic() - start,
        )

    def _raise_timeout(self, start: float, hold: _FlockHold | Lease | None) -> None:
        waited = time.monotonic() - start
        info = self._holder_seen(hold)
        who = info.describe() if info is not None else "an unknown holder"
        raise LockTimeout(
            f"timed out after {waited:.1f} s waiting for the lock on {self.describe()} held by {who} "
            f"({self.file})",
            lock_path=str(self.file),
            holder=info.to_dict() if info is not None else None,
            waited_s=round(waited, 3),
            repo_id=self.repo_id,
            revision=self.revision,
            backend=self.backend,
        )

    def release(self) -> None:
        """Release one level; the lock itself is released with the last one."""
        if self._pid != os.getpid():
            self._depth, self._pid = 0, os.getpid()
            return
        if self._depth <= 0:
            raise RuntimeError(f"{self!r} is not held by this object")
        slot = _slot(self._slot_key)
        self._depth -= 1
        slot.depth -= 1
        if slot.depth > 0:
            return
        hold, slot.hold, slot.owner = slot.hold, None, None
        try:
            if hold is not None:
                hold.release()
        finally:
            slot.gate.release()

    def _pause_heartbeat(self) -> None:
        """Test hook: the holder keeps the lease but stops refreshing it (a hung holder)."""
        hold = _slot(self._slot_key).hold
        if isinstance(hold, Lease):
            hold.pause_heartbeat()

    def __enter__(self) -> RepoLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    async def __aenter__(self) -> RepoLock:
        owner = ("task", id(asyncio.current_task()))
        if self._backend is None:
            await asyncio.to_thread(lambda: self.backend)  # the first probe touches the disk
        slot = _slot(self._slot_key)
        if slot.owner == owner and slot.depth > 0:
            self._acquire(None, owner, None)
            return self
        cancel = threading.Event()
        guard = threading.Lock()
        state = {"acquired": False, "abandoned": False}

        def work() -> None:
            self._acquire(None, owner, cancel)
            with guard:
                if state["abandoned"]:
                    self.release()
                else:
                    state["acquired"] = True

        try:
            await asyncio.get_running_loop().run_in_executor(None, work)
        except asyncio.CancelledError:
            # The worker thread keeps waiting after the task is cancelled: stop it, and give back a
            # lock it won in the meantime.
            with guard:
                state["abandoned"] = True
                cancel.set()
                if state["acquired"]:
                    self.release()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.release)


_start_time_cache: dict[int, int | None] = {}


def _own_start_time() -> int | None:
    pid = os.getpid()
    if pid not in _start_time_cache:
        _start_time_cache[pid] = _process_start_time(pid)
    return _start_time_cache[pid]


def repo_lock(cache_dir: str | Path, repo_id: str, **kw: Any) -> RepoLock:
    """``RepoLock(cache_dir, repo_id, **kw)``: use as ``with repo_lock(cache, "org/name"):``."""
    return RepoLock(cache_dir, repo_id, **kw)


def list_locks(cache_dir: str | Path, *, host_id: str | None = None) -> list[LockInfo]:
    """Every repo lock file in a cache with its holder and whether it is stale (``hub-prefetch locks``).

    ``host_id`` names this host as lock records do (default: ``Settings.from_env().host_id``).
    """
    folder = lock_dir(Path(cache_dir).expanduser())
    me = HostIdentity.local(host_id or Settings.from_env().host_id)
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
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return True if exc.errno in _CONTENDED else None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
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
