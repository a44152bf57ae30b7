"""The leader's heartbeat: a small JSON file its followers watch, and how they judge it dead.

The leader of a cache domain rewrites ``leader-<rank>.json`` every ``interval`` seconds from a daemon
thread. A follower takes over when the file stays unchanged for the lease TTL, or at once when the
leader's process is certainly gone from this very machine
(:func:`~hub_prefetch.lock.identity.process_dead_reason`: the same boot id and pid namespace, never the
host name).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from .. import cache, errors
from ..lock import HostIdentity, process_start_time
from ..lock.identity import process_dead_reason

__all__ = ["FORMAT", "Beacon", "leader_dead"]

logger = logging.getLogger("hub_prefetch.distributed")

#: Version of the beacon and outcome files.
FORMAT = 1


class Beacon:
    """The leader's heartbeat: a small JSON file rewritten every ``interval`` seconds by a daemon thread."""

    def __init__(self, path: Path, rank: int, me: HostIdentity, interval: float) -> None:
        self.path = path
        self.interval = interval
        self.record: dict[str, Any] = {
            "version": FORMAT,
            "rank": rank,
            "host": me.host,
            "boot_id": me.boot_id,
            "pidns": me.pidns,
            "pid": os.getpid(),
            "start_time": process_start_time(os.getpid()),
            "seq": 0,
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hub-prefetch-leader-beacon", daemon=True)

    def start(self) -> None:
        self._beat()
        self._thread.start()

    def _beat(self) -> None:
        self.record["seq"] += 1
        self.record["beat_at"] = time.time()
        cache.atomic_write_json(self.path, self.record)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
            except errors.CacheWriteError as exc:
                logger.warning("could not refresh %s: %s", self.path, exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()


def leader_dead(raw: dict[str, Any], me: HostIdentity) -> str | None:
    """Why the leader that wrote beacon ``raw`` is certainly dead, judged from this machine; else None."""
    try:
        pid = int(raw["pid"])
        start_time = raw.get("start_time")
    except (KeyError, TypeError, ValueError):
        return None
    return process_dead_reason(
        pid=pid,
        start_time=start_time if isinstance(start_time, int) else None,
        boot_id=raw.get("boot_id"),
        pidns=raw.get("pidns"),
        me=me,
        label=f"leader {raw.get('host')}:{pid}",
    )
