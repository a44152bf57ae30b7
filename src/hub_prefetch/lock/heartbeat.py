"""The heartbeat thread: one daemon thread per process refreshes every held lease when it falls due.

A thread per lease cost more than the rest of an acquisition together. A lease registers itself with
:func:`add` when it is won and leaves with :func:`remove`; the thread calls its ``beat()`` every
``interval`` seconds, outside the registry's lock, so a slow filesystem never blocks an acquire. After
``fork`` the child starts with an empty registry: the parent's thread does not exist there, and the
parent's leases are not the child's to refresh.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Protocol

__all__ = ["Beating", "add", "find", "remove"]


class Beating(Protocol):
    """What the heartbeat thread keeps alive (a held lease)."""

    path: Path
    interval: float

    def beat(self) -> None: ...


class _Registry:
    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.due: dict[Beating, float] = {}
        self.thread: threading.Thread | None = None
        self.wake_at = float("inf")  # when the thread will look again without being notified

    def add(self, item: Beating) -> None:
        with self.cond:
            due = self.due[item] = time.monotonic() + item.interval
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="hub-prefetch-heartbeat", daemon=True)
                self.thread.start()
            if due < self.wake_at:  # waking the thread on every acquire cost more than the acquire
                self.cond.notify()

    def remove(self, item: Beating) -> None:
        with self.cond:
            self.due.pop(item, None)

    def find(self, path: Path) -> Beating | None:
        with self.cond:
            return next((item for item in self.due if item.path == path), None)

    def _run(self) -> None:
        while True:
            with self.cond:
                while True:
                    if not self.due:
                        self.wake_at = float("inf")
                        self.cond.wait()
                        continue
                    item, when = min(self.due.items(), key=lambda entry: entry[1])
                    now = time.monotonic()
                    if when <= now:
                        self.due[item] = now + item.interval
                        break
                    self.wake_at = when
                    self.cond.wait(when - now)
            item.beat()  # outside the lock: a slow filesystem must not block add/remove


_registry = _Registry()


def add(item: Beating) -> None:
    """Start refreshing ``item`` every ``item.interval`` seconds."""
    _registry.add(item)


def remove(item: Beating) -> None:
    """Stop refreshing ``item`` (a no-op when it is not registered)."""
    _registry.remove(item)


def find(path: Path) -> Beating | None:
    """The registered item on ``path``, if any."""
    return _registry.find(path)


def _reset_after_fork() -> None:
    global _registry  # noqa: PLW0603 - the parent's thread does not exist in the child
    _registry = _Registry()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
