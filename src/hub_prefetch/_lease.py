"""The lease backend: an exclusively created file naming its holder, kept alive by a heartbeat.

Protocol (every contender follows it; no step trusts clocks of other hosts):

* **acquire**: ``O_CREAT | O_EXCL | O_NOFOLLOW`` create of ``<hash>.lease`` holding the owner record
  (host, boot id, pid namespace, pid, process start time, random token, acquired-at, TTL). The file is
  closed after each write, which is what publishes it to other NFS clients (close-to-open).
* **heartbeat**: a daemon thread rewrites the record in place every TTL/3 (a bumped ``seq``), after
  checking that the path still names the inode it created.
* **stale**: a holder on *this* host (same host name, boot id and pid namespace) whose pid is gone,
  a zombie, or a different process (start time) is dead now. A holder elsewhere is dead once its
  file stayed byte-for-byte unchanged for the TTL *it* recorded, as measured on the waiter's own
  monotonic clock. A live, heartbeating holder is never evicted.
* **takeover**: exactly one waiter per stale generation (the holder's token) wins an ``O_EXCL``
  ``<hash>.break.<token>`` marker; it re-reads the lease, renames it aside to a unique name, checks
  that what it moved is the generation it judged stale (else puts it back), deletes it, and then
  competes with everyone else in a plain exclusive create.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import socket
import stat
import threading
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from .cache import SHARED_FILE_MODE, key_hash
from .errors import CacheWriteError

__all__ = ["HolderInfo", "HostIdentity", "Lease", "dead_reason", "decode_record", "encode_record"]

logger = logging.getLogger("hub_prefetch.lock")

RECORD_VERSION = 1
_TOKEN_RE = re.compile(r"^[0-9a-f]{32}$")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class HostIdentity:
    """Who "this host" is: pids are only comparable when all three match."""

    host: str
    boot_id: str | None
    pidns: str | None

    @classmethod
    def local(cls, host_id: str | None = None) -> HostIdentity:
        """This process's identity; ``host_id`` (``Settings.host_id``) names the host, else its host name."""
        host = host_id or socket.gethostname()
        boot_id = None
        with contextlib.suppress(OSError):
            boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
        pidns = None
        with contextlib.suppress(OSError):
            pidns = os.readlink("/proc/self/ns/pid")
        return cls(host, boot_id, pidns)


@dataclass(frozen=True)
class HolderInfo:
    """The owner record of a held lock, as its holder wrote it."""

    host: str
    pid: int
    start_time: int | None
    token: str
    acquired_at: float
    heartbeat_at: float
    backend: str
    repo_id: str = ""
    repo_type: str = ""
    revision: str = ""
    ttl: float = 0.0
    seq: int = 0
    boot_id: str | None = None
    pidns: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose: every field is a scalar, and asdict's deepcopy dominated acquire cost.
        return {name: getattr(self, name) for name in _HOLDER_FIELDS}

    def describe(self) -> str:
        return f"{self.host}:{self.pid}"


_HOLDER_FIELDS = tuple(f.name for f in fields(HolderInfo))


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), None when unknown."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 of stat(5); fields[0] here is field 3
    except (IndexError, ValueError):
        return None


def _pid_state(pid: int) -> str:
    """ "alive", "dead" or "zombie" (a killed child not yet reaped still has a pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        pass  # another user's live process
    except OSError:
        return "alive"
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return "dead"
    except OSError:
        return "alive"
    tail = raw[raw.rfind(b")") + 2 :]
    return "zombie" if tail[:1] in (b"Z", b"X") else "alive"


def dead_reason(holder: HolderInfo, me: HostIdentity) -> str | None:
    """Why ``holder`` is certainly dead, judged from this host; None if alive or not ours to judge."""
    if holder.host != me.host or holder.pidns != me.pidns:
        return None
    if holder.boot_id and me.boot_id and holder.boot_id != me.boot_id:
        return f"holder {holder.describe()} ran before this host rebooted"
    if holder.pid == os.getpid():
        return None
    state = _pid_state(holder.pid)
    if state != "alive":
        return f"holder {holder.describe()} is {'a zombie' if state == 'zombie' else 'gone'}"
    if holder.start_time is not None:
        now = process_start_time(holder.pid)
        if now is not None and now != holder.start_time:
            return f"holder pid {holder.pid} was reused by another process"
    return None


def encode_record(holder: HolderInfo, **extra: Any) -> bytes:
    return json.dumps({"version": RECORD_VERSION, **holder.to_dict(), **extra}, sort_keys=True).encode()


def decode_record(raw: bytes | None) -> HolderInfo | None:
    """A holder record, or None for an empty, free, foreign or corrupt file."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("version") != RECORD_VERSION or data.get("state") == "free":
            return None
        return HolderInfo(**{k: v for k, v in data.items() if k in _HOLDER_FIELDS})
    except (ValueError, TypeError):
        return None


def read_nofollow(path: Path) -> tuple[bytes, os.stat_result] | None:
    """Content and stat of a regular file; None if absent. A planted symlink reads as empty."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError:
        try:
            return b"", os.lstat(path)
        except FileNotFoundError:
            return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return b"", st
        return os.pread(fd, 1 << 16, 0), st
    finally:
        os.close(fd)


def _generation(raw: bytes, holder: HolderInfo | None) -> str:
    if holder is not None and isinstance(holder.token, str) and _TOKEN_RE.fullmatch(holder.token):
        return holder.token
    return key_hash(raw)


class Lease:
    """One contender's view of one lease file: attempts, takeover, heartbeat and release."""

    def __init__(self, path: Path, record: HolderInfo, me: HostIdentity, ttl: float) -> None:
        self.path = path
        self.me = me
        self.ttl = ttl
        self.record = record
        self.lost = False
        self.last_seen: HolderInfo | None = None
        self._ino: tuple[int, int] | None = None
        self._seen: tuple[object, float] | None = None
        self._markers_seen: dict[str, float] = {}
        self.interval = max(ttl / 3.0, 0.01)
        self._active = False
        self._paused = False
        self._write_lock = threading.Lock()

    # -- acquiring ---------------------------------------------------------------------------------
    def try_acquire(self) -> bool:
        """One non-blocking attempt; may take over a stale lease on the way."""
        if self._create():
            return True
        found = read_nofollow(self.path)
        if found is None:
            return self._create()
        raw, st = found
        holder = decode_record(raw)
        self.last_seen = holder
        reason = dead_reason(holder, self.me) if holder is not None else None
        if reason is None:
            fingerprint = (st.st_ino, st.st_size, st.st_mtime_ns, raw)
            now = time.monotonic()
            if self._seen is None or self._seen[0] != fingerprint:
                self._seen = (fingerprint, now)
                return False
            ttl = holder.ttl if holder is not None and holder.ttl > 0 else self.ttl
            silent = now - self._seen[1]
            if silent < ttl:
                return False
            reason = f"its lease file stayed unchanged for {silent:.1f} s (ttl {ttl:g} s)"
        if self._break(_generation(raw, holder), holder, reason):
            return self._create()
        return False

    def _create(self) -> bool:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
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
            now = time.time()
            self.record = replace(self.record, acquired_at=now, heartbeat_at=now, seq=0)
            with contextlib.suppress(OSError):
                os.fchmod(fd, SHARED_FILE_MODE)  # umask may have dropped group write
            os.write(fd, encode_record(self.record))
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise CacheWriteError(
                f"cannot write lease {self.path}: {exc.strerror or exc}", path=str(self.path)
            ) from exc
        os.close(fd)  # publishes the record to other NFS clients
        self._seen = None
        self.lost = False
        self._start_heartbeat()
        return True

    def _break(self, generation: str, holder: HolderInfo | None, reason: str) -> bool:
        """Remove a stale lease; True if this call removed it (the caller then competes to create)."""
        marker = self.path.with_name(f"{self.path.stem}.break.{generation}")
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, SHARED_FILE_MODE)
        except FileExistsError:
            self._expire_marker(marker)
            return False
        except OSError as exc:
            raise CacheWriteError(f"cannot write {marker}: {exc.strerror or exc}", path=str(marker)) from exc
        try:
            os.write(fd, encode_record(self.record))
            os.close(fd)
            found = read_nofollow(self.path)
            if found is None or _generation(found[0], decode_record(found[0])) != generation:
                return False  # someone else finished the takeover first
            aside = self.path.with_name(f"{self.path.stem}.stale.{secrets.token_hex(8)}")
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                return False
            moved = read_nofollow(aside)
            if moved is not None and _generation(moved[0], decode_record(moved[0])) == generation:
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
        # The holder released and someone re-created the lease between our read and rename: the file
        # we moved is live. link() restores it only if the name is still free, never clobbering.
        try:
            os.link(aside, self.path)
        except FileExistsError:
            logger.error(  # noqa: TRY400 - an expected race outcome, not a crash
                "lease %s was displaced during a takeover race; its holder will notice", self.path
            )
        except OSError:
            os.rename(aside, self.path)
            return
        with contextlib.suppress(OSError):
            aside.unlink()

    def _expire_marker(self, marker: Path) -> None:
        # A takeover takes milliseconds; a marker seen for a whole TTL belongs to a crashed breaker.
        first = self._markers_seen.setdefault(marker.name, time.monotonic())
        if time.monotonic() - first >= self.ttl:
            with contextlib.suppress(OSError):
                marker.unlink()
            self._markers_seen.pop(marker.name, None)

    # -- holding -----------------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._active = True
        self._paused = False
        _heartbeats.add(self)

    def beat(self) -> None:
        """One heartbeat (called by the process's heartbeat thread)."""
        if self._paused:
            return
        try:
            ours = self._refresh()
        except OSError as exc:
            logger.warning("could not refresh lease %s: %s", self.path, exc.strerror or exc)
            return
        if not ours:
            self.lost = True
            _heartbeats.remove(self)
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
                fd = os.open(self.path, os.O_RDWR | _NOFOLLOW)
            except FileNotFoundError:
                return False
            try:
                if not self._is_ours(fd):
                    return False
                self.record = replace(self.record, heartbeat_at=time.time(), seq=self.record.seq + 1)
                data = encode_record(self.record)
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
            finally:
                os.close(fd)  # close publishes the write to other NFS clients
        return True

    def pause_heartbeat(self) -> None:
        """Test hook: keep holding but stop refreshing, as a hung or partitioned holder would."""
        self._paused = True

    def release(self) -> None:
        _heartbeats.remove(self)
        with self._write_lock:
            self._active = False
            ours = False
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)
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

    def abandon(self) -> None:
        """After fork, in the child: the parent's lease is not ours to refresh or delete."""
        self._active = False
        self._ino = None


class _Heartbeats:
    """One daemon thread per process refreshes every held lease when it falls due.

    A thread per lease cost more than the rest of an acquisition together.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.due: dict[Lease, float] = {}
        self.thread: threading.Thread | None = None
        self.wake_at = float("inf")  # when the thread will look again without being notified

    def add(self, lease: Lease) -> None:
        with self.cond:
            due = self.due[lease] = time.monotonic() + lease.interval
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="hub-prefetch-heartbeat", daemon=True)
                self.thread.start()
            if due < self.wake_at:  # waking the thread on every acquire cost more than the acquire
                self.cond.notify()

    def remove(self, lease: Lease) -> None:
        with self.cond:
            self.due.pop(lease, None)

    def _run(self) -> None:
        while True:
            with self.cond:
                while True:
                    if not self.due:
                        self.wake_at = float("inf")
                        self.cond.wait()
                        continue
                    lease, when = min(self.due.items(), key=lambda item: item[1])
                    now = time.monotonic()
                    if when <= now:
                        self.due[lease] = now + lease.interval
                        break
                    self.wake_at = when
                    self.cond.wait(when - now)
            lease.beat()  # outside the lock: a slow filesystem must not block add/remove


_heartbeats = _Heartbeats()


def _reset_after_fork() -> None:
    global _heartbeats  # noqa: PLW0603 - the parent's thread does not exist in the child
    _heartbeats = _Heartbeats()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
