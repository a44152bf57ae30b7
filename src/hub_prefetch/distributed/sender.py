"""A leader's sender: serves the next leader in the chain (or the one after, if that one fails) the
manifest and every item it lacks, each as soon as this node has bytes of it."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable

from ..engine import Digest
from .localcopy import GaveUp, LocalCopy
from .manifest import Item
from .transfer import ABORT, CTRL_TAG, END, KEEPALIVE, MANIFEST, RESUME, Channel, PeerFailed

__all__ = ["CHUNK_TIME", "MAX_CHUNK", "MIN_CHUNK", "WARM", "Sender"]

logger = logging.getLogger("hub_prefetch.distributed")

#: The smallest and largest DATA message. A relay forwards a chunk once it has all of it, so a chunk's
#: time on the wire is what every hop adds; each message also costs a fixed time (gloo, Python). The
#: size follows the rate the link shows while the sender has a backlog: about ``CHUNK_TIME`` of it per
#: message (64 KiB up to 13 MB/s, 1 MiB from 200 MB/s), so slow links keep hops short and fast ones
#: their throughput. Without a backlog the source's download is the limit, and the size stays put.
MIN_CHUNK = 64 << 10
MAX_CHUNK = 1 << 20
CHUNK_TIME = 0.005
_TRUST_AFTER = 16 << 20  # backlogged bytes sent before the rate is trusted (a send buffer hides the link)
#: RESUME's value from a leader whose cache is already warm: the manifest only, no items.
WARM = 1
_POLL = 0.02


class Sender:
    """Serves ``downstreams`` in order until one is served to the end, in a daemon thread."""

    def __init__(self, channel: Channel, copy: LocalCopy, downstreams: list[int], me: int) -> None:
        self.ch, self.copy, self.downstreams, self.me = channel, copy, downstreams, me
        self.ttl = channel.timeout
        self.chunk = MIN_CHUNK
        self.sent_bytes, self.send_time = 0, 0.0
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
                self.ch.drop(exc.peer)
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
        have = {int(j) for j in json.loads(bytes(msg.payload))} if msg.payload else set()
        self._stream(downstream, warm=msg.value == WARM, have=have)

    def _stream(self, downstream: int, *, warm: bool, have: set[int]) -> None:
        """The manifest, then every item ``downstream`` lacks. Items go side by side, a chunk of each in
        turn, as soon as this node has the bytes: a source whose Hub download fills several files at once
        passes each one on at the rate it arrives, and a shard stalled at the source holds no other back."""
        copy = self.copy
        outs: list[_Outgoing] = []
        try:
            self._wait(lambda: copy.manifest is not None, downstream)
            manifest = copy.manifest
            assert manifest is not None
            self.ch.send(downstream, MANIFEST, payload=manifest.to_bytes())
            if not warm:
                outs = [_Outgoing(self, j, item) for j, item in enumerate(manifest.items) if j not in have]
            while outs:
                self._wait(lambda: any(o.ready() for o in outs), downstream)
                moved = False
                for out in list(outs):
                    with copy.cond:
                        ready = out.ready()
                    if not ready:
                        continue
                    status = out.step(downstream)
                    moved = moved or status is not _IDLE
                    if status is _DONE:
                        outs.remove(out)
                if not moved:
                    time.sleep(_POLL)  # a file between its temp name and its published one
            self.ch.flush()
        except GaveUp:
            self._abort(downstream)
        finally:
            for out in outs:
                out.close()

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

    def timed(self, n: int, seconds: float) -> None:
        """A chunk of ``n`` bytes took ``seconds`` to hand over while more was waiting to be sent. Once
        more has gone out than a socket's send buffer can hide (its first megabytes seem to leave at
        once), aim each chunk at ``CHUNK_TIME`` of the rate seen, at most doubling or halving at a time."""
        self.sent_bytes += n
        self.send_time += seconds
        if self.sent_bytes < _TRUST_AFTER:
            return
        target = self.sent_bytes / max(self.send_time, 1e-6) * CHUNK_TIME
        size = min(max(target, self.chunk / 2, MIN_CHUNK), self.chunk * 2, MAX_CHUNK)
        self.chunk = int(size) // MIN_CHUNK * MIN_CHUNK

    def _abort(self, downstream: int) -> None:
        error = self.copy.error
        self.ch.send(
            downstream, ABORT, value=1 if error else 0, payload=json.dumps(error).encode() if error else b""
        )


_IDLE, _SENT, _DONE = object(), object(), object()


class _Outgoing:
    """One item on its way to one downstream: how much of its current generation was sent."""

    def __init__(self, sender: Sender, j: int, item: Item) -> None:
        self.sender, self.copy, self.j, self.item = sender, sender.copy, j, item
        self.again = False  # sending the item again from its published file, after a failed check
        self.fd: int | None = None
        self._start()

    def _start(self) -> None:
        self.close()
        with self.copy.cond:
            self.gen = self.copy.gen[self.j]
        self.sent, self.first = 0, True
        # What this node reads from a download in progress is checked on the way out: a temp file that
        # was abandoned or written out of order must not reach the next node as good bytes.
        self.check = Digest(self.item.expected) if self.copy.tailing and not self.again else None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def ready(self) -> bool:
        """Something to do (called under the copy's lock): a whole chunk, or the rest of a final item.

        Whole chunks only: a download in progress grows by a few kB at a time, and a message per
        increment would cost more fixed time per byte than the link has."""
        copy, j = self.copy, self.j
        if copy.gen[j] != self.gen or copy.final[j]:
            return True
        return self._whole_chunk(copy.avail[j])

    def _whole_chunk(self, avail: int) -> bool:
        return avail - self.sent >= self.sender.chunk and not self.again

    def step(self, downstream: int) -> object:
        """Send a chunk or this generation's END: ``_SENT``, ``_DONE`` (END ok), ``_IDLE`` (nothing yet)."""
        copy, j, item, ch = self.copy, self.j, self.item, self.sender.ch
        with copy.cond:
            stale = copy.gen[j] != self.gen
            avail, final, path = copy.avail[j], copy.final[j], copy.path[j]
        if stale:
            ch.send(downstream, END, j, 0)
            self._start()
            return _SENT
        if self.sent < avail and path is not None and (final or self._whole_chunk(avail)):
            if self.fd is None:
                try:
                    self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                except FileNotFoundError:
                    # Renamed into blobs/ between our read of its path and the open: the name of the
                    # published file comes next.
                    return _IDLE
                if final and not self.sent:
                    self.check = None  # a verified or published file: the receiver checks it anyway
            sender = self.sender
            started = time.monotonic()
            buffer, view = ch.data_buffer()  # waits for the frame sent two chunks ago
            n = os.preadv(self.fd, [view[: min(sender.chunk, avail - self.sent)]], self.sent)
            if not n:
                self.close()  # a temp file left behind (a retried download writes a new one): reopen by name
                return _IDLE
            chunk = view[:n]
            if self.check is not None:
                self.check.update(chunk)
            ch.corrupt(item.paths[0], self.first, chunk)
            ch.send_data(downstream, buffer, item=j, offset=self.sent, n=n)
            self.sent += n
            if avail - self.sent >= sender.chunk:  # a backlog: the hand-over time is the link's
                sender.timed(n, time.monotonic() - started)
            self.first = False
            return _SENT
        if final and self.sent >= item.size:
            if self.check is not None and not self.check.matches():
                logger.warning(
                    "rank %d: %s as read during its download fails its digest; sending it again",
                    self.sender.me,
                    item.paths[0],
                )
                ch.send(downstream, END, j, 0)
                self.again = True  # from the published file; the receiver checks it as always
                self._start()
                return _SENT
            ch.send(downstream, END, j, 1)
            self.close()
            return _DONE
        return _IDLE
