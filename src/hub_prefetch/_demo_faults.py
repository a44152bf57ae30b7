"""Faults that ``hub-prefetch demo`` injects from outside the workers: a stale lease, a killed downloader.

(The no-op ``flock`` acts inside the workers: :mod:`hub_prefetch.testing.demo_targets`.)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .lock import list_locks

if TYPE_CHECKING:
    from .testing import LocalHub

__all__ = ["kill_downloader", "plant_stale_lease"]


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
    """Whether ``pid`` has a huggingface_hub download temp file (``*.incomplete``) open: a downloader."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}").endswith(".incomplete"):
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
