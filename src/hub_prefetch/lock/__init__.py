"""The repo lock: one writer per repo and cache, on every filesystem, across machines.

Use :class:`RepoLock` (or :func:`repo_lock`) and :func:`list_locks`; the rest is here for code that
judges holders (``hub_prefetch.distributed``) or tests a lock. The modules, in filelock's manner:

========================  ========================================================================
``api``                   :class:`RepoLock`: key, re-entry, fencing, the acquire loop
``gate``                  the in-process gate threads queue on, and who holds it how deeply
``clock``                 :class:`Clock`: the time a lock waits on (injectable for tests)
``backend``               :class:`~hub_prefetch.lock.backend.Backend`: the shape of both backends
``flock``                 the one non-blocking ``flock`` attempt, and the ``flock`` backend
``lease``                 the lease backend (epochs, stale-holder takeover, fencing), for shared filesystems
``heartbeat``             the one thread per process that refreshes every held lease
``identity``              :class:`HostIdentity`, :class:`HolderInfo`, :func:`dead_reason`, the record
``probe``                 :class:`FsProbe`: which backend a folder supports, and why
``inspect``               :func:`list_locks`, :class:`LockInfo` (``hub-prefetch locks``)
========================  ========================================================================

Everything logs to ``hub_prefetch.lock``.
"""

from __future__ import annotations

from .api import RepoLock, repo_lock
from .clock import Clock, SystemClock
from .identity import HolderInfo, HostIdentity, dead_reason, process_start_time
from .inspect import LockInfo, list_locks
from .probe import FsProbe, clear_probe_cache, probe_filesystem

__all__ = [
    "Clock",
    "FsProbe",
    "HolderInfo",
    "HostIdentity",
    "LockInfo",
    "RepoLock",
    "SystemClock",
    "clear_probe_cache",
    "dead_reason",
    "list_locks",
    "probe_filesystem",
    "process_start_time",
    "repo_lock",
]
