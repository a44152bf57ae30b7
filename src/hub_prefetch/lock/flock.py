"""The ``flock`` backend, and the one non-blocking ``flock`` attempt every caller shares.

:func:`try_flock` is the only place that calls ``flock(LOCK_NB)``: the lock, the filesystem probe and
``hub-prefetch locks`` all classify its errors alike. EAGAIN, EWOULDBLOCK and EACCES mean "another
descriptor holds a conflicting lock" (False); every other error (ENOLCK, ENOSYS, EOPNOTSUPP, EINVAL,
EBADF, ...) means ``flock`` does not work here and is raised.

:class:`FlockBackend` locks ``<hash>.lock``. The kernel drops the lock when its holder dies, so a
crashed holder is succeeded at once; the holder writes its owner record into the file for
:meth:`~hub_prefetch.lock.RepoLock.holder` and ``hub-prefetch locks``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
from dataclasses import replace
from pathlib import Path

from ..cache import SHARED_FILE_MODE
from ..errors import CacheWriteError
from .clock import SYSTEM_CLOCK, Clock
from .identity import (
    NOFOLLOW,
    HolderInfo,
    HostIdentity,
    dead_reason,
    decode_record,
    encode_record,
    read_nofollow,
)

__all__ = ["CONTENDED", "FlockBackend", "errno_name", "read_holder", "try_flock", "unlock"]

logger = logging.getLogger("hub_prefetch.lock")  # one logger for the package: the CLI and tests watch it

#: errnos of a non-blocking ``flock`` that mean "held by another descriptor", not "broken here".
CONTENDED = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES})


def try_flock(fd: int, *, shared: bool = False) -> bool:
    """One non-blocking ``flock`` attempt on ``fd``: True when locked, False when another descriptor
    holds a conflicting lock (EAGAIN, EWOULDBLOCK, EACCES); every other ``OSError`` is raised."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in CONTENDED:
            return False
        raise
    return True


def unlock(fd: int) -> None:
    """Drop this descriptor's ``flock``."""
    fcntl.flock(fd, fcntl.LOCK_UN)


def errno_name(exc: OSError) -> str:
    """``"ENOLCK"`` for an ``OSError`` with that errno (its number when it has no name)."""
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def read_holder(path: Path, me: HostIdentity) -> HolderInfo | None:
    """The owner record in ``path``; None when free, unreadable, or its holder is dead on this host."""
    found = read_nofollow(path)
    info = decode_record(found[0]) if found else None
    if info is None or dead_reason(info, me):
        return None
    return info


class FlockBackend:
    """One descriptor on ``<hash>.lock``; kept open across attempts of one acquisition."""

    def __init__(self, path: Path, record: HolderInfo, me: HostIdentity, clock: Clock = SYSTEM_CLOCK) -> None:
        self.path = path
        self.record = record
        self.me = me
        self.clock = clock
        #: True from a won attempt until release/close: what an interrupted acquire must give back.
        self.held = False
        self._open()

    def _open(self) -> None:
        path = self.path
        self.writable = True
        self.fd = -1
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | NOFOLLOW, SHARED_FILE_MODE)
        except PermissionError:
            # Another user's lock file without group write: flock works on a read-only descriptor.
            self.fd = self._open_readonly()
            self.writable = False
        except OSError as exc:
            raise CacheWriteError(f"cannot open lock {path}: {exc.strerror or exc}", path=str(path)) from exc
        st = os.fstat(self.fd)
        if not stat.S_ISREG(st.st_mode):
            self.close()
            raise CacheWriteError(f"lock {path} is not a regular file", path=str(path))
        if st.st_uid == os.geteuid() and st.st_mode & 0o777 != SHARED_FILE_MODE:
            with contextlib.suppress(OSError):
                os.fchmod(self.fd, SHARED_FILE_MODE)  # umask may have dropped group write
        self.ino = (st.st_dev, st.st_ino)

    def _open_readonly(self) -> int:
        try:
            return os.open(self.path, os.O_RDONLY | NOFOLLOW)
        except OSError as exc:
            raise CacheWriteError(
                f"cannot open lock {self.path}: {exc.strerror or exc}", path=str(self.path)
            ) from exc

    def try_acquire(self) -> bool:
        """One non-blocking attempt; True when held (the owner record is then written)."""
        try:
            if not try_flock(self.fd):
                return False
        except OSError as exc:
            raise CacheWriteError(
                f"flock on {self.path} failed with {errno_name(exc)}; set HUB_PREFETCH_LOCK=lease (or auto)",
                path=str(self.path),
            ) from exc
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self.ino:
            # Someone removed or replaced the file while we waited: a lock on an orphan inode excludes
            # nobody. Start over on whatever the name points to now.
            unlock(self.fd)
            self.close()
            self._open()
            return False
        self.held = True
        now = self.clock.time()
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

    def still_held(self) -> bool:
        """Fencing: the kernel never takes a ``flock`` away, but an operator may delete or replace the
        file, after which a newcomer locks a new inode: held only while the name is our inode."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        return self.fd >= 0 and (st.st_dev, st.st_ino) == self.ino

    def holder(self) -> HolderInfo | None:
        """Who holds the lock now, from its owner record (None when free or its holder died here)."""
        return read_holder(self.path, self.me)

    def release(self) -> None:
        """Mark the record free, unlock and close."""
        self.held = False
        try:
            self._write(encode_record(self.record, state="free"))
            unlock(self.fd)
        finally:
            self.close()

    def close(self) -> None:
        """Close the descriptor without unlocking: a failed attempt, or a forked child's copy (closing
        it leaves the parent's lock intact; LOCK_UN would drop it). Idempotent: a descriptor number is
        closed once, never again after another thread may have reused it."""
        self.held = False
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
