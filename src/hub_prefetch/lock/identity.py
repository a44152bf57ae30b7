"""Who holds a lock and whether that holder is certainly dead: shared by both backends and distributed.

* :class:`HostIdentity` is "this host": a host name (``Settings.host_id``, else the system's), the boot
  id and the pid namespace. Pids are only comparable when all three match.
* :class:`HolderInfo` is the owner record a holder writes into its lock file; :func:`encode_record` /
  :func:`decode_record` are its versioned JSON codec (an empty, free, foreign or corrupt record
  decodes to None), :func:`read_nofollow` reads a record file without following a planted symlink.
* :func:`dead_reason` judges a holder from this machine (:func:`same_machine`: the same boot id and pid
  namespace, never the host name): gone, a zombie or a reused pid. A holder on another machine, on
  an earlier boot, or without a boot id is never judged here (only its heartbeat can tell).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "NOFOLLOW",
    "RECORD_VERSION",
    "HolderInfo",
    "HostIdentity",
    "PidState",
    "dead_reason",
    "decode_record",
    "encode_record",
    "own_start_time",
    "pid_state",
    "process_dead_reason",
    "process_start_time",
    "read_nofollow",
    "same_machine",
]

RECORD_VERSION = 1
#: ``open`` flags for lock files: never follow a planted symlink, never leak into a child process.
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

PidState = Literal["alive", "dead", "zombie"]


@dataclass(frozen=True)
class HostIdentity:
    """Who "this machine" is: ``host`` names it for people; ``boot_id`` and ``pidns`` decide whether a
    pid recorded elsewhere can be judged here (:func:`same_machine`)."""

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
    epoch: int = 0

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
    stat_fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(stat_fields[19])  # field 22 of stat(5); stat_fields[0] here is field 3
    except (IndexError, ValueError):
        return None


_start_time_cache: dict[int, int | None] = {}


def own_start_time() -> int | None:
    """:func:`process_start_time` of this process, read once per pid (a forked child reads its own)."""
    pid = os.getpid()
    if pid not in _start_time_cache:
        _start_time_cache[pid] = process_start_time(pid)
    return _start_time_cache[pid]


def pid_state(pid: int) -> PidState:
    """``"alive"``, ``"dead"`` or ``"zombie"`` (a killed child not yet reaped still has a pid).

    ``kill(pid, 0)`` answering EPERM proves the process exists (another user's): it is alive, whatever
    ``/proc`` shows (under ``hidepid=2`` another user's ``/proc/<pid>`` is simply absent).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except OSError:
        return "alive"  # EPERM: exists; anything else: we cannot tell, so never "dead"
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return "alive"  # kill() just said it exists; /proc may hide it
    tail = raw[raw.rfind(b")") + 2 :]
    return "zombie" if tail[:1] in (b"Z", b"X") else "alive"


def same_machine(holder: HolderInfo, me: HostIdentity) -> bool:
    """Whether ``holder``'s pid can be judged here: the same boot id and the same pid namespace.

    The host name is a label for people, never evidence: cloned images all say ``localhost``,
    containers share a ``--hostname``, and the initial pid namespace has the same name
    (``pid:[4026531836]``) on every Linux machine. Only the boot id tells machines (and boots) apart;
    a holder without one, or seen from a process without one, is remote.
    """
    return _comparable(holder.boot_id, holder.pidns, me)


def _comparable(boot_id: str | None, pidns: str | None, me: HostIdentity) -> bool:
    return bool(boot_id and me.boot_id and boot_id == me.boot_id and pidns == me.pidns)


def process_dead_reason(
    *,
    pid: int,
    start_time: int | None,
    boot_id: str | None,
    pidns: str | None,
    me: HostIdentity,
    label: str,
) -> str | None:
    """Why the process ``pid`` (started at ``start_time``, on the machine of ``boot_id``/``pidns``) is
    certainly dead, judged from this machine; None if alive or not ours to judge.

    A process on another machine (or another boot of this one, or one we cannot compare) is never
    judged here: only its heartbeat going silent for its TTL can tell.
    """
    if not _comparable(boot_id, pidns, me) or pid == os.getpid():
        return None
    state = pid_state(pid)
    if state != "alive":
        return f"{label} is {'a zombie' if state == 'zombie' else 'gone'}"
    if start_time is not None:
        now = process_start_time(pid)
        if now is not None and now != start_time:
            return f"{label}: its pid {pid} was reused by another process"
    return None


def dead_reason(holder: HolderInfo, me: HostIdentity) -> str | None:
    """Why lock holder ``holder`` is certainly dead, judged here (:func:`process_dead_reason`)."""
    return process_dead_reason(
        pid=holder.pid,
        start_time=holder.start_time,
        boot_id=holder.boot_id,
        pidns=holder.pidns,
        me=me,
        label=f"holder {holder.describe()}",
    )


def encode_record(holder: HolderInfo, **extra: Any) -> bytes:
    """The JSON owner record of ``holder`` (``extra`` keys, e.g. ``state="free"``, are added)."""
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
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | NOFOLLOW)
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
