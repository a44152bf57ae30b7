"""The clock a lock waits on: the real one by default, a fake one in tests.

Every wait of :class:`~hub_prefetch.lock.RepoLock` and of a lease contender goes through one small
object: ``monotonic()`` for deadlines, TTLs and log cadence, ``time()`` for the timestamps written
into owner records, ``sleep()`` between attempts, and ``acquire(gate, timeout)`` for the in-process
gate threads queue on. A test passes ``RepoLock(..., clock=fake)`` whose time moves only when the lock
sleeps or waits, so timeouts, TTLs and "still waiting" lines are exact and take no wall time.

The process-wide lease heartbeat thread keeps the real clock: it serves every lock of the process.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    """What a lock asks of time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (deadlines, TTLs, log cadence)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (timestamps in owner records)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Pause between attempts."""
        ...

    def acquire(self, gate: threading.Lock, timeout: float) -> bool:
        """Take ``gate`` within ``timeout`` seconds (> 0) of this clock; False if it stayed taken."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic`, :func:`time.time`, :func:`time.sleep`."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def acquire(self, gate: threading.Lock, timeout: float) -> bool:
        return gate.acquire(timeout=timeout)


SYSTEM_CLOCK: Clock = SystemClock()
