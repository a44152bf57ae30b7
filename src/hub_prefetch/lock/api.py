"""A repo lock that holds on every filesystem.

``RepoLock(cache_dir, repo_id, repo_type=..., revision=...)`` is keyed on (cache folder, repo type,
repo id), whatever the revision: one writer per repo, because loads of one repo pinned to a commit
and on a branch share blobs, refs and huggingface_hub's per-blob locks (which the lease may switch
off). The revision only names the holder's purpose in its record. The file lives in the cache's own
lock folder, ``<cache>/.locks/hub_prefetch/``, named by a hash of (repo type, repo id): never a path
built from a raw repo id, never ``/tmp``. The cache folder is part of the key by location rather than
by hashing its path, so hosts that mount one shared cache at different paths still exclude each other.

Backends (``HUB_PREFETCH_LOCK=auto|flock|lease``, or ``backend=``): :mod:`~hub_prefetch.lock.flock`
on ``<hash>.lock`` where :mod:`~hub_prefetch.lock.probe` shows that it excludes (local filesystems),
:mod:`~hub_prefetch.lock.lease` on ``<hash>.lease`` everywhere else (``flock`` raises, does nothing,
or cannot exclude other hosts: NFS, Lustre, GPFS, CIFS, FUSE, ...). :attr:`RepoLock.probe` says which
and why.

All contenders for one cache must use the same backend; ``auto`` guarantees that for every process
that sees the folder through the same kind of mount.

Waiting has no default timeout (a live holder may download for hours); ``timeout=`` or
``HUB_PREFETCH_LOCK_TIMEOUT`` bounds it with :class:`~hub_prefetch.errors.LockTimeout`. While waiting,
``hub_prefetch.lock`` logs "waiting for <repo>@<revision>: held by <host>:<pid> for 42 s (lease)"
every ``HUB_PREFETCH_WAIT_LOG_INTERVAL`` seconds. Every wait runs on ``clock=`` (a
:class:`~hub_prefetch.lock.clock.Clock`, the real one by default), so tests need not wait on wall time.

Threads and re-entry: within one process, holders of one key are serialised by an in-process gate
first, so threads exclude each other on either backend and hand over without polling. A thread
that acquires a key it already holds (through this or any other ``RepoLock`` of the same key)
re-enters: the hold is counted and the lock is released when the last level is released. An
asyncio task re-enters the same way (``async with``); a different task, even one that happens to
run on the same executor thread, waits. After ``fork`` a child holds nothing it inherited.

Fencing: :meth:`RepoLock.still_held` tells a holder whether the lock is still its own (a lease is
taken over when its holder stayed silent for its TTL, e.g. frozen by an NFS failover; an operator may
delete a lock file). Code that publishes into the cache asks before every step, and stops when not.
:attr:`RepoLock.epoch` numbers a lease's acquisitions (it only grows).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

from ..cache import ensure_dir, key_hash, lock_dir
from ..errors import InvalidRequestError, LockLostError, LockTimeout
from ..settings import LockBackendName, Settings
from . import flock, gate, lease
from .backend import Backend
from .clock import SYSTEM_CLOCK, Clock
from .identity import HolderInfo, HostIdentity, own_start_time
from .probe import FsProbe, probe_filesystem

__all__ = ["RepoLock", "repo_lock"]

logger = logging.getLogger("hub_prefetch.lock")  # one logger for the package: the CLI and tests watch it

_POLL_MAX = {"flock": 0.05, "lease": 0.2}
_GATE_SLICE = 0.1


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


# -- the public lock --------------------------------------------------------------------------------
class RepoLock:
    """An exclusive lock on one (cache, repo type, repo id); a sync and async context manager."""

    def __init__(
        self,
        cache_dir: str | Path,
        repo_id: str,
        *,
        repo_type: str = "model",
        revision: str = "main",
        settings: Settings | None = None,
        backend: LockBackendName | None = None,
        timeout: float | None = None,
        lease_ttl: float | None = None,
        host_id: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``clock`` (default: the real one) is what waits, deadlines, TTLs and record times use."""
        self.cache_dir = Path(cache_dir).expanduser()
        self.repo_id, self.repo_type, self.revision = str(repo_id), str(repo_type), str(revision)
        s = settings if settings is not None else Settings.from_env(cache_dir=self.cache_dir)
        self.requested_backend: LockBackendName = backend or s.lock_backend
        if self.requested_backend not in ("auto", "flock", "lease"):
            raise InvalidRequestError(f"lock backend {backend!r}: expected auto, flock or lease")
        self.timeout = timeout if timeout is not None else s.lock_timeout
        self.lease_ttl = float(lease_ttl if lease_ttl is not None else s.lease_ttl)
        if self.lease_ttl <= 0:
            raise InvalidRequestError(f"lease ttl must be positive, got {self.lease_ttl}")
        self.wait_log_interval = max(float(s.wait_log_interval), 0.01)
        self.identity = HostIdentity.local(host_id or s.host_id)
        digest = key_hash("repo-lock-v2", self.repo_type, self.repo_id)
        self.lock_dir = lock_dir(self.cache_dir)
        self.path = self.lock_dir / f"{digest}.lock"
        self.lease_path = self.lock_dir / f"{digest}.lease"
        self.clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self._probe: FsProbe | None = None
        self._slot_key = ""
        self._depth = 0
        self._pid = os.getpid()

    def __repr__(self) -> str:
        backend = self._probe.backend if self._probe is not None else "?"
        return f"RepoLock({self.describe()!r}, path={str(self.path)!r}, backend={backend})"

    def describe(self) -> str:
        """``repo_id@revision`` (and the repo type unless ``model``), as log lines name this lock."""
        return f"{self.repo_id}@{self.revision}" + (
            "" if self.repo_type == "model" else f" ({self.repo_type})"
        )

    @property
    def probe(self) -> FsProbe:
        """What the lock folder supports and the backend chosen (probes it on first access)."""
        if self._probe is None:
            ensure_dir(self.lock_dir)
            # Threads of this process queue on one gate per real file, however the cache was spelled.
            self._slot_key = os.path.join(os.path.realpath(self.lock_dir), self.path.name)
            found = probe_filesystem(self.lock_dir)
            requested = self.requested_backend
            if requested == "auto" or requested == found.backend:  # noqa: PLR1714 - mypy narrows this form
                self._probe = found
            else:
                # Chosen by name, but what flock does here is still known: where it raises,
                # huggingface_hub's per-blob locks must be switched off whatever the backend.
                self._probe = found.requested(requested)
        return self._probe

    @property
    def probe_reason(self) -> str:
        """``probe.reason``: why this backend (``"requested"`` when chosen by name)."""
        return self.probe.reason

    @property
    def backend(self) -> Literal["flock", "lease"]:
        """``"flock"`` or ``"lease"``: the backend in use (probes the lock folder on first access)."""
        return self.probe.backend

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
            start_time=own_start_time(),
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
        """Who holds the lock now, from its owner record; None when free (or a flock holder is dead here)."""
        if self.backend == "flock":
            return flock.read_holder(self.path, self.identity)
        return lease.read_holder(self.lease_path)

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
        slot = gate.slot(self._slot_key)
        if slot.owner == owner and slot.depth > 0:
            slot.depth += 1
            self._depth += 1
            return
        clock = self.clock
        start = clock.monotonic()
        deadline = None if timeout is None or timeout < 0 else start + timeout
        next_log = start + self.wait_log_interval
        poll_max = _POLL_MAX[backend]
        delay = 0.0005
        gate_held = False
        hold: Backend | None = None
        logged = False
        try:
            while True:
                now = clock.monotonic()
                if not gate_held:
                    remaining = None if deadline is None else max(deadline - now, 0.0)
                    wait = min(_GATE_SLICE, next_log - now, *(() if remaining is None else (remaining,)))
                    gate_held = clock.acquire(slot.gate, wait) if wait > 0 else slot.gate.acquire(False)
                    if gate_held:
                        hold = self._new_hold(backend)
                if hold is not None and hold.try_acquire():
                    break
                now = clock.monotonic()
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
                    clock.sleep(max(min(pause, next_log - now), 0.0))
                    delay = min(delay * 2, poll_max)
            slot.owner, slot.depth, slot.hold = owner, 1, hold
            self._depth += 1
        except BaseException:
            # Interrupted or failed anywhere above, even after winning: give back exactly what we
            # took (the lock itself if won, the descriptor, the in-process gate), so nothing leaks.
            if self._depth and slot.hold is hold and hold is not None:
                self._depth -= 1
                slot.owner, slot.depth, slot.hold = None, 0, None
            if hold is not None:
                if hold.held:  # won, even if the interrupt came before try_acquire could return
                    hold.release()
                else:
                    hold.close()
            if gate_held:
                slot.gate.release()
            raise
        if logged:
            logger.info("acquired %s after %.1f s (%s)", self.describe(), clock.monotonic() - start, backend)

    def _new_hold(self, backend: str) -> Backend:
        record = self._record()
        if backend == "flock":
            return flock.FlockBackend(self.path, record, self.identity, self.clock)
        return lease.Lease(self.lease_path, record, self.identity, self.lease_ttl, self.clock)

    def _holder_seen(self, hold: Backend | None) -> HolderInfo | None:
        return hold.holder() if hold is not None else self.holder()

    def _log_wait(self, start: float, hold: Backend | None, *, level: int) -> None:
        info = self._holder_seen(hold)
        if info is None:
            who = "an unknown holder"
        else:
            held_for = max(self.clock.time() - info.acquired_at, 0.0) if info.acquired_at else 0.0
            who = f"{info.describe()} for {held_for:.0f} s"
        logger.log(
            level,
            "waiting for %s: held by %s (%s); waited %.0f s",
            self.describe(),
            who,
            self.backend,
            self.clock.monotonic() - start,
        )

    def _raise_timeout(self, start: float, hold: Backend | None) -> None:
        waited = self.clock.monotonic() - start
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

    def still_held(self) -> bool:
        """Fencing: whether this process still holds the lock it acquired (False when not held).

        A lease may be taken over after its holder was silent for its TTL (frozen, partitioned), and
        an operator may delete a lock file; a holder asks before every step that publishes.
        """
        if not self.is_held:
            return False
        hold = gate.slot(self._slot_key).hold
        return hold is not None and hold.still_held()

    def fence(self, label: str, error: type[LockLostError] = LockLostError) -> Callable[[], None]:
        """A check to call before every step that publishes: it raises ``error`` (naming ``label``, the
        lock file and the epoch this holder had) once :meth:`still_held` says the lock was taken away."""
        epoch = self.epoch

        def fence() -> None:
            if not self.still_held():
                raise error(
                    f"{label}: the repo lock {self.file} was taken from this holder (epoch {epoch})",
                    lock_path=str(self.file),
                    epoch=epoch,
                    repo_id=self.repo_id,
                    revision=self.revision,
                )

        return fence

    @property
    def succeeded_dead_holder(self) -> bool:
        """Whether this holder took the lease over from one judged dead or silent past its TTL (always
        False for ``flock``, whose dead holders the kernel releases): what that holder was writing has no
        writer any more."""
        hold = gate.slot(self._slot_key).hold if self.is_held else None
        return bool(getattr(hold, "succeeded_stale", False))

    @property
    def epoch(self) -> int:
        """The acquisition number of the held lease (grows with every acquisition); 0 for ``flock``."""
        hold = gate.slot(self._slot_key).hold if self.is_held else None
        return int(getattr(hold, "epoch", 0))

    def release(self) -> None:
        """Release one level; the lock itself is released with the last one."""
        if self._pid != os.getpid():
            self._depth, self._pid = 0, os.getpid()
            return
        if self._depth <= 0:
            raise RuntimeError(f"{self!r} is not held by this object")
        slot = gate.slot(self._slot_key)
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

    def __enter__(self) -> RepoLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    async def __aenter__(self) -> RepoLock:
        owner = ("task", id(asyncio.current_task()))
        if self._probe is None:
            await asyncio.to_thread(lambda: self.probe)  # the first probe touches the disk
        slot = gate.slot(self._slot_key)
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


def repo_lock(cache_dir: str | Path, repo_id: str, **kw: Any) -> RepoLock:
    """``RepoLock(cache_dir, repo_id, **kw)``: use as ``with repo_lock(cache, "org/name"):``."""
    return RepoLock(cache_dir, repo_id, **kw)
