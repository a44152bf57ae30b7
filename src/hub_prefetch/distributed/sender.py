"""A leader's sender: serves the next leader in the chain (or the one after, if that one fails) the
manifest and every item it lacks, each as soon as this node has bytes of it."""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable

from ..engine import Digest
from .localcopy import GaveUp, LocalCopy
from .manifest import Item
from .transfer import ABORT, CTRL_TAG, DATA, END, KEEPALIVE, MANIFEST, RESUME, Channel, PeerFailed

__all__ = ["CHUNK", "WARM", "Sender"]

logger = logging.getLogger("hub_prefetch.distributed")

#: Bytes per DATA message: a relay forwards a chunk as soon as it has it, so this is the pipeline's step.
CHUNK = 256 << 10
#: RESUME's value from a leader whose cache is already warm: the manifest only, no items.
WARM = 1
_POLL = 0.02


class Sender:
    """Serves ``downstreams`` in order until one is served to the end, in a daemon thread."""

    def __init__(self, channel: Channel, copy: LocalCopy, downstreams: list[int], me: int) -> None:
        self.ch, self.copy, self.downstreams, self.me = channel, copy, downstreams, me
        self.ttl = channel.timeout
        self._thread = threading.Thread(target=self._serve, name="hub-prefetch-fanout-send", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        """Wait until the downstream is served (every step of it is bounded by the TTL)."""
        if self._thread.ident is not None:
            self._thread.join()

    def _serve(self) -> None:
        for downstream in self.downstreams:
            try:
                self._serve_one(downstream)
            except PeerFailed as exc:
                logger.warning("rank %d: %s; serving the next leader", self.me, exc)
            except Exception:
                logger.exception("rank %d: the fan-out sender failed", self.me)
                return
            else:
                return

    def _serve_one(self, downstream: int) -> None:
        msg = self.ch.recv(downstream, tag=CTRL_TAG)
        if msg.kind != RESUME:
            raise PeerFailed(downstream, f"expected RESUME, got kind {msg.kind}")
        have = {int(j) for j in json.loads(msg.payload)} if msg.payload else set()
        self._stream(downstream, warm=msg.value == WARM, have=have)

    def _stream(self, downstream: int, *, warm: bool, have: set[int]) -> None:
        """The manifest, then every item ``downstream`` lacks, each as soon as this node has bytes of it
        (a complete item first): a shard stalled at the source does not hold the others back."""
        copy = self.copy
        try:
            self._wait(lambda: copy.manifest is not None, downstream)
            manifest = copy.manifest
            assert manifest is not None
            self.ch.send(downstream, MANIFEST, payload=manifest.to_bytes())
            todo = [] if warm else [j for j in range(len(manifest.items)) if j not in have]
            while todo:
                self._wait(lambda: any(copy.final[j] or copy.avail[j] for j in todo), downstream)
                with copy.cond:
                    j = next((j for j in todo if copy.final[j]), None)
                    if j is None:
                        j = next(j for j in todo if copy.avail[j])
                self._stream_item(downstream, j, manifest.items[j])
                todo.remove(j)
        except GaveUp:
            self._abort(downstream)

    def _wait(self, ready: Callable[[], bool], downstream: int) -> None:
        """Wait until ``ready()`` (under the copy's lock) or the copy fails; keep the peer alive."""
        copy = self.copy
        while True:
            with copy.cond:
                if copy.cond.wait_for(lambda: ready() or copy.gave_up, timeout=self.ttl / 4):
                    if copy.gave_up and not ready():
                        raise GaveUp
                    return
            self.ch.send(downstream, KEEPALIVE)

    def _abort(self, downstream: int) -> None:
        error = self.copy.error
        self.ch.send(
            downstream, ABORT, value=1 if error else 0, payload=json.dumps(error).encode() if error else b""
        )

    def _ready(self, j: int, gen: int, sent: int, again: bool) -> bool:
        """Something to do for item ``j`` (called under the copy's lock)."""
        copy = self.copy
        return copy.gen[j] != gen or copy.final[j] or (copy.avail[j] > sent and not again)

    def _stream_item(self, downstream: int, j: int, item: Item) -> None:
        copy = self.copy
        again = False  # sending the item again from its published file, after a failed check
        while True:  # once per generation of this item
            with copy.cond:
                gen = copy.gen[j]
            sent, fd, first = 0, None, True
            # What this node reads from a download in progress is checked on the way out: a temp file that
            # was abandoned or written out of order must not reach the next node as good bytes.
            check = Digest(item.expected) if copy.tailing and not again else None
            try:
                while True:
                    self._wait(functools.partial(self._ready, j, gen, sent, again), downstream)
                    with copy.cond:
                        stale = copy.gen[j] != gen
                        avail, final, path = copy.avail[j], copy.final[j], copy.path[j]
                    if stale:
                        self.ch.send(downstream, END, j, 0)
                        break
                    if sent < avail and path is not None and (final or not again):
                        if fd is None:
                            try:
                                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                                if final and not sent:
                                    check = None  # the published file: the receiver checks it anyway
                            except FileNotFoundError:
                                # Renamed into blobs/ between our read of its path and the open: the
                                # receiver names the published file next.
                                time.sleep(_POLL)
                                continue
                        data = os.pread(fd, min(CHUNK, avail - sent), sent)
                        if not data:
                            # A temp file left behind (a retried download writes a new one): reopen by name.
                            os.close(fd)
                            fd = None
                            time.sleep(_POLL)
                            continue
                        if check is not None:
                            check.update(data)
                        data = self.ch.corrupt(item.paths[0], first, data)
                        self.ch.send(downstream, DATA, j, sent, data)
                        sent += len(data)
                        first = False
                        continue
                    if final and sent >= item.size:
                        if check is not None and not check.matches():
                            logger.warning(
                                "rank %d: %s as read during its download fails its digest; sending it again",
                                self.me,
                                item.paths[0],
                            )
                            self.ch.send(downstream, END, j, 0)
                            again = True  # from the published file; the receiver checks it as always
                            break
                        self.ch.send(downstream, END, j, 1)
                        return
            finally:
                if fd is not None:
                    os.close(fd)
