"""The in-process gate: per process and lock file, the lock threads queue on and who holds it how deeply.

Threads (and asyncio tasks) of one process exclude each other here before any of them touches the
lock file, hand over without polling, and re-enter a key they already hold. After ``fork`` a child
holds nothing it inherited: the parent's holds are closed (never released) and the registry is new.
"""

from __future__ import annotations

import os
import threading

from .backend import Backend

__all__ = ["Slot", "slot"]


class Slot:
    """The gate of one lock file in this process, its owner and depth, and the backend hold."""

    def __init__(self) -> None:
        self.gate = threading.Lock()
        self.owner: object = None
        self.depth = 0
        self.hold: Backend | None = None


_slots: dict[str, Slot] = {}
_slots_lock = threading.Lock()


def slot(key: str) -> Slot:
    """The slot of lock file ``key`` (its real path), created on first use."""
    found = _slots.get(key)
    if found is None:
        with _slots_lock:
            found = _slots.setdefault(key, Slot())
    return found


def _after_fork_in_child() -> None:
    global _slots, _slots_lock  # noqa: PLW0603 - the child must not inherit the parent's holds
    for inherited in _slots.values():
        if inherited.hold is not None:
            inherited.hold.close()  # the parent's hold: neither refreshed nor released here
    _slots = {}
    _slots_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
