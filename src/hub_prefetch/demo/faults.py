"""The faults ``hub-prefetch demo`` can inject, named once here (the CLI's ``--fault`` choices come from
:data:`FAULTS`), and the two it injects from outside the workers: a stale lease, a killed downloader.

(The no-op ``flock`` acts inside the workers: :mod:`hub_prefetch.demo.targets`, switched on by
:data:`NOOP_FLOCK_ENV`; the 503 outage and the stalled shard are the local Hub's own fault knobs.)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..lock import list_locks

if TYPE_CHECKING:
    from ..testing import LocalHub

__all__ = [
    "FAULTS",
    "NOOP_FLOCK_ENV",
    "OUTAGE_S",
    "STALE_LEASE_TTL",
    "Fault",
    "kill_downloader",
    "plant_stale_lease",
]

#: The environment variable that turns ``fcntl.flock`` into a silent no-op in a demo worker.
NOOP_FLOCK_ENV = "HUB_PREFETCH_TESTING_NOOP_FLOCK"
#: Seconds the Hub answers 503 to every file request at the start of each cold run (``http-503``).
OUTAGE_S = 3.0
#: The TTL of the lease the dead holder on "node-17" leaves behind (``stale-lease``).
STALE_LEASE_TTL = 4.0


@dataclass(frozen=True)
class Fault:
    """One fault of the demo: its line in ``hub-prefetch demo --help`` and its sentence under the table."""

    name: str
    summary: str
    description: str


#: fault name -> the fault, in the order ``--help`` lists them.
FAULTS: dict[str, Fault] = {
    fault.name: fault
    for fault in (
        Fault("none", "no fault: the plain race of N cold loaders", "no fault: N cold loaders at once"),
        Fault(
            "killed-downloader",
            "the process that is downloading is SIGKILLed mid-shard",
            "the process downloading is SIGKILLed mid-shard (it counts as killed, not failed)",
        ),
        Fault(
            "http-503",
            "the Hub answers 503 to the first file requests",
            f"the Hub answers 503 to every file request for the first {OUTAGE_S:g} s of each cold run",
        ),
        Fault(
            "noop-flock",
            "flock() succeeds but locks nothing (Lustre, NFS local_lock, FUSE)",
            "flock() succeeds but excludes no one (as on Lustre, GPFS, NFS with local_lock, FUSE)",
        ),
        Fault(
            "stale-lease",
            "a dead holder on another host left a repo lease behind",
            "a holder on another host (node-17) died holding the repo lease "
            f"(ttl {STALE_LEASE_TTL:g} s); plain loaders have no such lock",
        ),
    )
}


def plant_stale_lease(cache: Path, repo_id: str, ttl: float) -> None:
    """A holder "on node-17" takes the repo lease and dies (SIGKILL): its heartbeat stops with it."""
    code = (
        "import os, sys\n"
        "from hub_prefetch.lock import RepoLock\n"
        f"lock = RepoLock({str(cache)!r}, {repo_id!r}, backend='lease', lease_ttl={ttl!r}, "
        "host_id='node-17')\n"
        "lock.acquire()\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if line.strip() != "held":
            raise RuntimeError("could not plant the stale lease")
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def _writing_temp_file(pid: int) -> bool:
    """Whether ``pid`` has a download's temp file open (huggingface_hub's ``*.incomplete``, or a partial
    file of hub-prefetch's engine): a downloader."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.endswith(".incomplete") or "/.hub_prefetch/partial/" in target:
                return True
    return False


def _downloader(cache: Path, pids: list[int]) -> int | None:
    """The worker that is downloading now: one writing a temp file, else the repo lock's holder."""
    for index, pid in enumerate(pids):
        if _writing_temp_file(pid):
            return index
    with contextlib.suppress(Exception):
        for info in list_locks(cache):
            if info.holder is not None and not info.stale and info.holder.pid in pids:
                return pids.index(info.holder.pid)
    return None


def kill_downloader(
    hub: LocalHub, pool: Any, cache: Path, *, stall_id: int, stop: threading.Event, killed: list[int]
) -> None:
    """When the stalled shard download is under way, SIGKILL the worker writing it, then let the Hub go on.

    The stall (a server fault knob) holds the first shard body after a few bytes, so the kill always
    lands mid-shard however slow the machine is; the other workers see a normal, if slower, Hub.
    """
    deadline = time.monotonic() + 90
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                stalled = any(r.fault == "stall" and r.t_end is None and r.bytes_sent for r in hub.requests())
                index = _downloader(cache, pool.pids) if stalled else None
                if index is not None:
                    pool.kill(index)
                    killed.append(index)
                    return
            stop.wait(0.02)
    finally:
        with contextlib.suppress(Exception):
            hub.clear_fault(stall_id)
