"""Which lock backend a folder supports: ``flock`` where it excludes, a lease everywhere else.

Two questions decide it:

1. *Is the folder on a network filesystem?* There a node-local ``flock`` may succeed on every host
   at once (Lustre and GPFS without ``-o flock``, NFS with ``local_lock``, FUSE mounts), so it cannot
   be trusted across hosts. We read the filesystem type from ``statfs(2)``'s ``f_type`` (via ctypes)
   and, for the name, from ``/proc/self/mountinfo`` matched on the folder's device number.
2. *Does ``flock`` work at all here?* A probe file gets two descriptors: locking the first must
   succeed and locking the second must conflict. A raising ``flock`` (ENOSYS, ENOLCK, EOPNOTSUPP,
   EINVAL, ...), one that refuses a lock on a file nobody else holds, or a silent no-op (both
   succeed) selects the lease. Both attempts are :func:`hub_prefetch.lock.flock.try_flock`, the one
   the lock itself makes, so the probe and the lock classify every errno alike.

The answer is a typed :class:`FsProbe`, cached per process and folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import secrets
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from ..errors import CacheWriteError
from .flock import errno_name, try_flock

__all__ = [
    "NETWORK_FS_MAGIC",
    "NETWORK_FS_NAMES",
    "FsProbe",
    "clear_probe_cache",
    "filesystem_type",
    "probe_filesystem",
]

logger = logging.getLogger("hub_prefetch.lock")  # one logger for the package: the CLI and tests watch it

#: statfs ``f_type`` magic numbers of filesystems where a node-local lock cannot exclude other hosts.
NETWORK_FS_MAGIC: dict[int, str] = {
    0x6969: "nfs",
    0x0BD00BD0: "lustre",
    0x47504653: "gpfs",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x517B: "smb",
    0x65735546: "fuse",
    0x00C36400: "ceph",
    0x5346414F: "afs",
    0x6B414653: "afs",
    0x7461636F: "ocfs2",
    0x01161970: "gfs2",
    0x19830326: "beegfs",
    0x01021997: "9p",
    0x20030528: "orangefs",
    0xAAD7AAEA: "panfs",
    0x6A656A63: "virtiofs",
}
#: ``/proc/self/mountinfo`` fstype names (prefixes) of the same filesystems.
NETWORK_FS_NAMES = (
    "nfs",
    "lustre",
    "gpfs",
    "cifs",
    "smb",
    "fuse",
    "ceph",
    "afs",
    "ocfs2",
    "gfs2",
    "beegfs",
    "9p",
    "glusterfs",
    "orangefs",
    "pvfs2",
    "panfs",
    "virtiofs",
    "wekafs",
    "davfs",
    "sshfs",
)


@dataclass(frozen=True)
class FsProbe:
    """What the probe of a lock folder found, and the backend it chose.

    ``flock_works``: locking a fresh file succeeded; ``flock_excludes``: a second descriptor on it
    then conflicted; ``flock_error``: the errno name when ``flock`` raised (``"CONTENDED"`` when it
    refused a lock on a file nobody else holds: EAGAIN, EWOULDBLOCK or EACCES). ``flock`` is tested on
    every filesystem, network ones (whose type alone chooses the lease) and backends requested by name
    included: where it raises, huggingface_hub's per-blob locks must be switched off whatever the
    backend.
    """

    backend: Literal["flock", "lease"]
    flock_works: bool | None
    flock_excludes: bool | None
    flock_error: str | None
    network_fs: bool | None
    fs_type: str | None
    reason: str

    @property
    def flock_raises(self) -> bool:
        """Whether ``flock`` raised here (then huggingface_hub's per-blob locks would fail too)."""
        return self.flock_error is not None

    def requested(self, backend: Literal["flock", "lease"]) -> FsProbe:
        """This probe with the backend chosen by name (``backend=`` or ``HUB_PREFETCH_LOCK``)."""
        return replace(self, backend=backend, reason=f"requested ({self.reason})")


_probe_cache: dict[tuple[int, str], FsProbe] = {}
_probe_cache_lock = threading.Lock()


class _StatfsBuf(ctypes.Structure):
    # Linux puts f_type (a word) first in struct statfs on every 64-bit ABI; the rest is padding we
    # never read, sized generously.
    _fields_ = (("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 256))


def _statfs_type(path: Path) -> int | None:
    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_long) != 8:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = _StatfsBuf()
        if libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return int(buf.f_type) & 0xFFFFFFFF


def _mountinfo_type(path: Path) -> str | None:
    """The fstype of the mount holding ``path``, matched by device number (exact under bind mounts)."""
    try:
        dev = os.stat(path).st_dev
        text = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    wanted = f"{os.major(dev)}:{os.minor(dev)}"
    found = None
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if sep and len(fields) >= 5 and fields[2] == wanted and right.split():
            found = right.split()[0]  # the last match is the mount on top
    return found


def filesystem_type(path: Path) -> tuple[str | None, bool]:
    """``(name, is_network)`` of the filesystem holding ``path``; name is None when unknown."""
    magic = _statfs_type(path)
    name = _mountinfo_type(path)
    if magic is not None and magic in NETWORK_FS_MAGIC:
        return name or NETWORK_FS_MAGIC[magic], True
    if name is not None and name.lower().startswith(NETWORK_FS_NAMES):
        return name, True
    return name, False


def _probe_file(directory: Path) -> tuple[Path, int]:
    """A fresh private file in ``directory`` and a descriptor on it; a clear error where none can be made."""
    name = directory / f".probe-{secrets.token_hex(8)}"
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return name, os.open(name, flags, 0o600)
    except OSError as exc:
        raise CacheWriteError(
            f"cannot create files in lock folder {directory}: {exc.strerror or exc}", path=str(directory)
        ) from exc


def _remove_probe_file(name: Path, *fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)
    with contextlib.suppress(OSError):
        name.unlink()


def _test_flock(directory: Path, fs_type: str | None) -> FsProbe:
    """Lock one probe file through two descriptors: the second must conflict."""
    name, fd1 = _probe_file(directory)
    fd2 = -1
    try:
        fd2 = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        works, excludes, error, reason = _two_descriptors(fd1, fd2)
    finally:
        _remove_probe_file(name, fd2, fd1)
    return FsProbe("flock" if excludes else "lease", works, excludes, error, False, fs_type, reason)


def _two_descriptors(fd1: int, fd2: int) -> tuple[bool, bool, str | None, str]:
    """``(works, excludes, errno name, reason)``: lock ``fd1``, then ``fd2`` on the same file."""
    try:
        if not try_flock(fd1):
            return (
                False,
                False,
                "CONTENDED",
                "flock raises EAGAIN/EWOULDBLOCK/EACCES on a file nobody else holds",
            )
    except OSError as exc:
        return False, False, errno_name(exc), f"flock raises {errno_name(exc)} here"
    try:
        if not try_flock(fd2):
            return True, True, None, "flock excludes on a local filesystem"
    except OSError as exc:
        return True, False, errno_name(exc), f"flock raises {errno_name(exc)} on a conflicting descriptor"
    return True, False, None, "flock is a silent no-op here (two descriptors did not conflict)"


def probe_filesystem(directory: Path) -> FsProbe:
    """The backend for lock files in ``directory`` (which must exist), and why.

    Cached per process and folder. Raises :class:`~hub_prefetch.errors.CacheWriteError` at once when
    the folder is read-only.
    """
    directory = Path(directory)
    try:
        key = (os.stat(directory).st_dev, str(directory))
    except OSError as exc:
        raise CacheWriteError(f"lock folder {directory}: {exc.strerror or exc}", path=str(directory)) from exc
    with _probe_cache_lock:
        cached = _probe_cache.get(key)
    if cached is not None:
        return cached
    name, remote = filesystem_type(directory)
    result = _test_flock(directory, name)  # also where the type decides: whether flock raises matters
    if remote:
        reason = f"network filesystem {name}: a node-local flock does not exclude other hosts"
        result = replace(result, backend="lease", network_fs=True, reason=reason)
    if result.backend == "lease":
        logger.warning("lock folder %s: using the lease backend because %s", directory, result.reason)
    with _probe_cache_lock:
        _probe_cache[key] = result
    return result


def clear_probe_cache() -> None:
    """Forget probe results (tests that change how ``flock`` behaves call this)."""
    with _probe_cache_lock:
        _probe_cache.clear()
