"""The lease backend: an exclusively created file naming its holder, kept alive by a heartbeat.

Protocol (every contender follows it; no step trusts clocks of other hosts):

* **acquire**: ``O_CREAT | O_EXCL | O_NOFOLLOW`` create of ``<hash>.lease`` holding the owner record
  (host, boot id, pid namespace, pid, process start time, random token, acquired-at, TTL). The file is
  closed after each write, which is what publishes it to other NFS clients (close-to-open).
* **heartbeat**: a daemon thread rewrites the record in place every TTL/3 (a bumped ``seq``), after
  checking that the path still names the inode it created.
* **epoch**: the new holder then takes the next number of ``<hash>.epoch`` (a counter only holders
  write) and records it in its lease: every acquisition of a repo gets a larger epoch than the last.
* **stale**: a holder on *this machine* (same boot id and pid namespace, never judged by host name)
  whose pid is gone, a zombie, or a different process (start time) is dead now. A holder elsewhere is
  dead once its file stayed byte-for-byte unchanged for the TTL *it* recorded, as measured on the
  waiter's own monotonic clock, counting only time in which the waiter itself ran: a gap between two
  of its polls longer than a heartbeat interval (the waiter was stopped, swapped out, or frozen with
  the holder by an NFS failover) restarts the count. A live, heartbeating holder is never evicted.
* **takeover**: exactly one waiter per stale generation (the holder's token) wins an ``O_EXCL``
  ``<hash>.break.<token>`` marker; it re-reads the lease and goes on only if it is byte for byte what
  it judged stale, renames it aside to a unique name, checks the moved bytes again (else puts the file
  back with ``link()``, which never replaces a lease someone created meanwhile), deletes it, and then
  competes with everyone else in a plain exclusive create.
* **fencing**: the holder asks :meth:`Lease.still_held` (its token still in the file at its inode)
  before every step that publishes into the cache; an evicted holder stops there. No code path
  overwrites or deletes a lease file it does not own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import threading
from dataclasses import replace
from pathlib import Path

from ..cache import SHARED_FILE_MODE, key_hash
from ..errors import CacheWriteError
from . import heartbeat
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

__all__ = ["Lease", "held_lease", "pause_heartbeat", "read_holder"]

logger = logging.getLogger("hub_prefetch.lock")  # one logger for the package: the CLI and tests watch it

_TOKEN_RE = re.compile(r"^[0-9a-f]{32}$")


def read_holder(path: Path) -> HolderInfo | None:
    """The owner record in a lease file; None when absent or unreadable (a stale holder is returned)."""
    found = read_nofollow(path)
    return decode_record(found[0]) if found else None


def _generation(raw: bytes, holder: HolderInfo | None) -> str:
    if holder is not None and isinstance(holder.token, str) and _TOKEN_RE.fullmatch(holder.token):
        return holder.token
    return key_hash(raw)


class Lease:
    """One contender's view of one lease file: attempts, takeover, heartbeat and release."""

    def __init__(
        self, path: Path, record: HolderInfo, me: HostIdentity, ttl: float, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.path = path
        self.me = me
        self.ttl = ttl
        self.clock = clock
        self.record = record
        self.lost = False
        self.last_seen: HolderInfo | None = None
        self._ino: tuple[int, int] | None = None
        self._seen: tuple[object, float] | None = None
        self._last_poll: float | None = None
        #: A gap between two polls longer than this means the waiter did not run (stopped, frozen).
        self.stall_gap = max(ttl / 3.0, 1.0)
        self.epoch = 0
        self._markers_seen: dict[str, float] = {}
        self.interval = max(ttl / 3.0, 0.01)
        #: True from a won attempt until release/close: what an interrupted acquire must give back.
        self.held = False
        #: Whether the won attempt took the lease over from a holder judged dead or silent past its TTL.
        self.succeeded_stale = False
        self._active = False
        self._write_lock = threading.Lock()

    # -- acquiring ---------------------------------------------------------------------------------
    def try_acquire(self) -> bool:
        """One non-blocking attempt; may take over a stale lease on the way."""
        self.succeeded_stale = False
        if self._create():
            return True
        found = read_nofollow(self.path)
        if found is None:
            return self._create()
        raw, st = found
        holder = decode_record(raw)
        self.last_seen = holder
        reason = dead_reason(holder, self.me) if holder is not None else None
        now = self.clock.monotonic()
        stalled = self._last_poll is not None and now - self._last_poll > self.stall_gap
        self._last_poll = now
        if reason is None:
            fingerprint = (st.st_ino, st.st_size, st.st_mtime_ns, raw)
            if self._seen is None or self._seen[0] != fingerprint or stalled:
                # A changed file is a live holder; after a gap in our own polling, the silence we saw
                # is not evidence either: the holder may have been frozen with us.
                self._seen = (fingerprint, now)
                return False
            ttl = holder.ttl if holder is not None and holder.ttl > 0 else self.ttl
            silent = now - self._seen[1]
            if silent < ttl:
                return False
            reason = f"its lease file stayed unchanged for {silent:.1f} s (ttl {ttl:g} s)"
        if self._break(raw, holder, reason):
            self.succeeded_stale = self._create()
            return self.succeeded_stale
        return False

    def _create(self) -> bool:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW
        try:
            fd = os.open(self.path, flags, SHARED_FILE_MODE)
        except FileExistsError:
            return False
        except OSError as exc:
            raise CacheWriteError(
                f"cannot create lease {self.path}: {exc.strerror or exc}", path=str(self.path)
            ) from exc
        try:
            st = os.fstat(fd)
            self._ino = (st.st_dev, st.st_ino)
            now = self.clock.time()
            self.record = replace(self.record, acquired_at=now, heartbeat_at=now, seq=0, epoch=0)
            with contextlib.suppress(OSError):
                os.fchmod(fd, SHARED_FILE_MODE)  # umask may have dropped group write
            os.write(fd, encode_record(self.record))
            os.close(fd)  # publishes the record to other NFS clients
            fd = -1
            self.epoch = self._next_epoch()
            self.record = replace(self.record, epoch=self.epoch)
            self._rewrite()
            self._seen = None
            self.lost = False
            self._start_heartbeat()
            self.held = True
        except BaseException as exc:
            # Whatever stopped us (a full disk, Ctrl-C) between creating the file and holding it: the
            # file is ours and nobody will ever refresh it, so it goes now, not after a TTL.
            heartbeat.remove(self)
            self._active = False
            if fd >= 0:
                os.close(fd)
            self._remove_own()
            self._ino = None
            if isinstance(exc, OSError):
                raise CacheWriteError(
                    f"cannot write lease {self.path}: {exc.strerror or exc}", path=str(self.path)
                ) from exc
            raise
        return True

    def _next_epoch(self) -> int:
        """Take the next acquisition number of this lock (called holding the freshly created lease)."""
        counter = self.path.with_suffix(".epoch")
        found = read_nofollow(counter)
        try:
            last = int(found[0].decode().strip() or 0) if found else 0
        except ValueError:
            last = 0
        epoch = last + 1
        tmp = counter.with_name(f".{counter.name}.{secrets.token_hex(6)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, SHARED_FILE_MODE)
        try:
            os.write(fd, str(epoch).encode())
        finally:
            os.close(fd)
        os.replace(tmp, counter)  # replaces the name, never follows a link planted there
        return epoch

    def _rewrite(self) -> None:
        """Write the record in place into the lease file this hold created (the heartbeat's write)."""
        fd = os.open(self.path, os.O_RDWR | NOFOLLOW)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self._ino:
                raise FileNotFoundError(f"lease {self.path} is no longer the file this hold created")
            data = encode_record(self.record)
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    def _remove_own(self) -> None:
        """Delete the lease file if, and only if, it is still the one this hold created."""
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if self._ino is not None and (st.st_dev, st.st_ino) == self._ino:
                os.unlink(self.path)

    def _break(self, judged: bytes, holder: HolderInfo | None, reason: str) -> bool:
        """Remove a stale lease whose bytes were ``judged``; True if this call removed it (the caller
        then competes to create). A lease that changed in any byte since it was judged is left alone."""
        generation = _generation(judged, holder)
        marker = self.path.with_name(f"{self.path.stem}.break.{generation}")
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, SHARED_FILE_MODE)
        except FileExistsError:
            self._expire_marker(marker)
            return False
        except OSError as exc:
            raise CacheWriteError(f"cannot write {marker}: {exc.strerror or exc}", path=str(marker)) from exc
        try:
            os.write(fd, encode_record(self.record))
            os.close(fd)
            found = read_nofollow(self.path)
            if found is None or found[0] != judged:
                return False  # a heartbeat, a release or another breaker came first
            aside = self.path.with_name(f"{self.path.stem}.stale.{secrets.token_hex(8)}")
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                return False
            moved = read_nofollow(aside)
            if moved is not None and moved[0] == judged:
                aside.unlink()
                who = holder.describe() if holder is not None else "an unreadable holder"
                logger.warning("took over stale lock %s from %s: %s", self.path, who, reason)
                return True
            self._put_back(aside)
            return False
        finally:
            with contextlib.suppress(OSError):
                marker.unlink()

    def _put_back(self, aside: Path) -> None:
        # The holder beat, or released and someone re-created the lease, between our read and rename:
        # the file we moved is live. link() restores it only if the name is still free, never
        # clobbering; where link() is refused (CIFS, many FUSE mounts) we leave it aside rather than
        # rename over a lease we do not own, and its holder, fenced, re-enters as a waiter.
        try:
            os.link(aside, self.path)
        except FileExistsError:
            logger.error(  # noqa: TRY400 - an expected race outcome, not a crash
                "lease %s was displaced during a takeover race; its holder will notice", self.path
            )
        except OSError as exc:
            logger.error(  # noqa: TRY400 - an expected race outcome, not a crash
                "lease %s was displaced during a takeover race and cannot be put back here (%s); "
                "its holder will notice and wait again",
                self.path,
                exc.strerror or exc,
            )
            return
        with contextlib.suppress(OSError):
            aside.unlink()

    def _expire_marker(self, marker: Path) -> None:
        # A takeover takes milliseconds; a marker seen for a whole TTL belongs to a crashed breaker.
        first = self._markers_seen.setdefault(marker.name, self.clock.monotonic())
        if self.clock.monotonic() - first >= self.ttl:
            with contextlib.suppress(OSError):
                marker.unlink()
            self._markers_seen.pop(marker.name, None)

    # -- holding -----------------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._active = True
        heartbeat.add(self)

    def beat(self) -> None:
        """One heartbeat (called by the process's heartbeat thread)."""
        try:
            ours = self._refresh()
        except OSError as exc:
            logger.warning("could not refresh lease %s: %s", self.path, exc.strerror or exc)
            return
        if not ours:
            self.lost = True
            heartbeat.remove(self)
            logger.error("lost the lease %s: another process replaced it", self.path)

    def _is_ours(self, fd: int) -> bool:
        # The inode alone is not enough: after a takeover the evicted file's inode number is often
        # reused at once for the new lease. The token names this hold.
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self._ino:
            return False
        current = decode_record(os.pread(fd, 1 << 16, 0))
        return current is not None and current.token == self.record.token

    def _refresh(self) -> bool:
        with self._write_lock:
            if not self._active:
                return True  # released while this beat was being scheduled
            try:
                fd = os.open(self.path, os.O_RDWR | NOFOLLOW)
            except FileNotFoundError:
                return False
            try:
                if not self._is_ours(fd):
                    return False
                self.record = replace(self.record, heartbeat_at=self.clock.time(), seq=self.record.seq + 1)
                data = encode_record(self.record)
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
            finally:
                os.close(fd)  # close publishes the write to other NFS clients
        return True

    def still_held(self) -> bool:
        """Fencing: is the lease file still the one this hold created, with this hold's token in it?

        One ``open`` and ``read``; the heartbeat thread's own finding (``lost``) answers first.
        """
        if self.lost or self._ino is None:
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | NOFOLLOW)
        except OSError:
            self.lost = True
            return False
        try:
            ours = self._is_ours(fd)
        except OSError:
            ours = False
        finally:
            os.close(fd)
        if not ours:
            self.lost = True
        return ours

    def holder(self) -> HolderInfo | None:
        """The holder this contender last saw while waiting, else the record on disk now."""
        return self.last_seen if self.last_seen is not None else read_holder(self.path)

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours (else note that it was lost)."""
        self.held = False
        heartbeat.remove(self)
        with self._write_lock:
            self._active = False
            ours = False
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | NOFOLLOW)
                try:
                    ours = self._is_ours(fd)
                finally:
                    os.close(fd)
            if ours:
                self.path.unlink()
            elif not self.lost:
                self.lost = True
                logger.error("lease %s was taken from this holder before release", self.path)
        self._ino = None

    def close(self) -> None:
        """Drop this contender without touching the file: a failed attempt, or after fork in the child
        (the parent's lease is not ours to refresh or delete)."""
        self.held = False
        heartbeat.remove(self)
        self._active = False
        self._ino = None


def held_lease(path: Path) -> Lease | None:
    """The lease on ``path`` that this process holds and keeps refreshing, if any (tests, diagnostics)."""
    found = heartbeat.find(path)
    return found if isinstance(found, Lease) else None


def pause_heartbeat(lease: Lease) -> None:
    """Keep holding ``lease`` but stop refreshing it, as a hung or partitioned holder would.

    For tests, with :func:`held_lease`: the heartbeat registry's business, not a method of the lock.
    """
    heartbeat.remove(lease)
