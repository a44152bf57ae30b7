"""How much of each item this node has, and where: the state a leader's receiver (or its own Hub
download) writes and its sender reads, under one condition variable."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from .. import errors
from .manifest import Manifest

__all__ = ["GaveUp", "LocalCopy"]


class GaveUp(Exception):
    """This node can serve nothing more (raised in its sender)."""


class LocalCopy:
    """Per item: the bytes available so far, the file holding them, whether it is published, and a
    generation that grows each time its bytes so far turn out void."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.manifest: Manifest | None = None
        self.avail: list[int] = []
        self.path: list[Path | None] = []
        self.final: list[bool] = []
        self.gen: list[int] = []
        self.error: dict[str, Any] | None = None  # a typed error every rank should raise
        self.gave_up = False  # this node cannot serve (a local failure)
        # True while the bytes come from this node's own Hub download (temp files that may be written
        # out of order or abandoned): the sender then checks them against the digest on the way out.
        self.tailing = False

    def set_manifest(self, manifest: Manifest) -> None:
        with self.cond:
            if self.manifest is not None:
                return
            n = len(manifest.items)
            self.manifest = manifest
            self.avail, self.path, self.final, self.gen = [0] * n, [None] * n, [False] * n, [0] * n
            self.cond.notify_all()

    def grow(self, j: int, path: Path, avail: int) -> None:
        with self.cond:
            self.path[j], self.avail[j] = path, avail
            self.cond.notify_all()

    def restart(self, j: int) -> None:
        """Item ``j``'s bytes so far are void (a bad copy, a lost upstream): senders start it again."""
        with self.cond:
            if self.avail[j] or self.final[j]:
                self.gen[j] += 1
            self.avail[j], self.final[j], self.path[j] = 0, False, None
            self.cond.notify_all()

    def set_final(self, j: int, path: Path) -> None:
        with self.cond:
            assert self.manifest is not None
            self.path[j], self.avail[j], self.final[j] = path, self.manifest.items[j].size, True
            self.cond.notify_all()

    def fail(self, error: dict[str, Any] | None) -> None:
        with self.cond:
            self.error, self.gave_up = error, True
            self.cond.notify_all()

    def fail_with(self, exc: BaseException) -> None:
        """This node failed with ``exc``: its downstream raises the same error if every domain would get
        it from the Hub too (no access, a bad request, the Hub down), and looks elsewhere otherwise."""
        everyone = (errors.HubAccessError, errors.InvalidRequestError, errors.HubUnavailableError)
        self.fail(errors.to_json(exc) if isinstance(exc, everyone) else None)

    def complete(self) -> bool:
        with self.cond:
            return self.manifest is not None and all(self.final)
