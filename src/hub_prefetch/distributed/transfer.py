"""The wire of the peer fan-out: framed messages between two domain leaders over a gloo subgroup.

A message is one frame: a header of five int64 (kind, item, value, this frame's payload length, the
bytes of the message still to come in further frames) and the payload, at most ``MAX_PAYLOAD`` bytes.
The receiver keeps ``DEPTH`` receives of a whole frame posted per peer, and the sender keeps two data
frames in flight: gloo hands a send over only once its receive is posted, and a receive posted just in
time costs a one-way trip per message, which a node whose downlink is full of its own Hub download
pays in queueing delay (at 80 Mbit/s an upload fell to half the link; with frames posted ahead it keeps
the link).

Every send and receive waits at most ``timeout`` seconds (the lease TTL): a peer that is gone fails at
once (gloo reports the closed connection), one that stalls fails after the timeout, never after the
job's collective timeout. A peer that failed once is never used again by this call: an operation that
timed out may still be pending inside gloo, so its tensors are kept alive (``_stale``).

For tests only, ``HUB_PREFETCH_FANOUT_FAULT=corrupt:<rank>:<path glob>`` makes rank ``<rank>`` flip
one byte of the first chunk it sends of a matching file (a chunk corrupted in transit).
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

__all__ = [
    "ABORT",
    "CTRL_TAG",
    "DATA",
    "DATA_TAG",
    "END",
    "FAULT_ENV",
    "KEEPALIVE",
    "MANIFEST",
    "RESUME",
    "Channel",
    "Message",
    "PeerFailed",
]

#: Message kinds.
MANIFEST, DATA, END, KEEPALIVE, ABORT, RESUME = 1, 2, 3, 4, 5, 6
#: Tags: the stream (upstream -> downstream) and the control messages (downstream -> upstream).
DATA_TAG, CTRL_TAG = 17, 18
FAULT_ENV = "HUB_PREFETCH_FANOUT_FAULT"
#: The header (five int64), the largest payload of one frame, and the receives kept posted per peer.
HEAD_BYTES = 40
MAX_PAYLOAD = 4 << 20
DEPTH = 4
_KINDS = (MANIFEST, DATA, END, KEEPALIVE, ABORT, RESUME)
# Receives still posted when a channel is closed: gloo may hold their buffers until the process ends.
_GRAVEYARD: list[Any] = []

logger = logging.getLogger("hub_prefetch.distributed")


class PeerFailed(Exception):
    """A peer is gone, stalled past the timeout, or sent something out of protocol."""

    def __init__(self, peer: int, reason: str) -> None:
        super().__init__(f"peer rank {peer}: {reason}")
        self.peer = peer
        self.reason = reason


@dataclass(frozen=True)
class Message:
    """One message; ``payload`` is a view of the receive buffer (``bytes(payload)`` to keep a copy)."""

    kind: int
    item: int = 0
    value: int = 0
    payload: bytes | memoryview = b""


class Channel:
    """Framed point-to-point messages on a subgroup ``group`` (global ranks), each bounded by ``timeout``."""

    def __init__(self, dist: Any, group: Any, rank: int, timeout: float) -> None:
        import torch  # noqa: PLC0415 - torch is optional

        self._torch = torch
        self.dist = dist
        self.group = group
        self.rank = rank
        self.timeout = timeout
        self._stale: list[Any] = []  # operations that failed: keep their tensors alive
        self._posted: dict[tuple[int, int], deque[tuple[Any, Any]]] = {}
        self._ring = [self._frame_buffer() for _ in range(2)]
        self._ring_views = [t.numpy().data.cast("B") for t in self._ring]
        self._in_flight: list[tuple[Any, int] | None] = [None, None]
        self._next = 0
        self._fault = _parse_fault(os.environ.get(FAULT_ENV, ""), rank)

    def _wait(self, work: Any, keep: Any, peer: int, what: str, timeout: float | None) -> None:
        try:
            work.wait(timedelta(seconds=self.timeout if timeout is None else timeout))
        except Exception as exc:
            self._stale.append((work, keep))
            raise PeerFailed(peer, f"{what} failed: {str(exc).splitlines()[0][:200]}") from exc

    def _frame_buffer(self) -> Any:
        """Room for a whole frame (its pages are touched only as they are filled)."""
        return self._torch.empty(HEAD_BYTES + MAX_PAYLOAD, dtype=self._torch.uint8)

    def _head(self, frame: Any, fields: list[int]) -> None:
        """Write the header: kind, item, value, this frame's payload length, bytes still to come."""
        torch = self._torch
        frame[:HEAD_BYTES].view(torch.int64)[:] = torch.tensor(fields)

    def _frame(self, kind: int, item: int, value: int, payload: bytes | memoryview, more: int) -> Any:
        torch = self._torch
        frame = torch.empty(HEAD_BYTES + len(payload), dtype=torch.uint8)
        self._head(frame, [kind, item, value, len(payload), more])
        if len(payload):
            frame[HEAD_BYTES:] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        return frame

    def send(
        self,
        peer: int,
        kind: int,
        item: int = 0,
        value: int = 0,
        payload: bytes | memoryview = b"",
        *,
        tag: int = DATA_TAG,
    ) -> None:
        """One message, in as many frames as its payload needs; returns once every frame is handed over."""
        view = memoryview(payload).cast("B")
        works = []
        offset = 0
        while True:
            n = min(MAX_PAYLOAD, len(view) - offset)
            frame = self._frame(kind, item, value, view[offset : offset + n], len(view) - offset - n)
            works.append((self.dist.isend(frame, dst=peer, group=self.group, tag=tag), frame))
            offset += n
            if offset >= len(view):
                break
        for work, frame in works:
            self._wait(work, frame, peer, "send", None)

    def data_buffer(self) -> tuple[int, memoryview]:
        """A send buffer whose previous frame is handed over, and the view its payload goes into."""
        i = self._next
        self._settle(i)
        return i, self._ring_views[i][HEAD_BYTES:]

    def _settle(self, i: int) -> None:
        """Wait until ring buffer ``i``'s frame in flight, if any, is handed over."""
        pending = self._in_flight[i]
        if pending is not None:
            self._in_flight[i] = None
            self._wait(pending[0], self._ring[i], pending[1], "send", None)

    def send_data(self, peer: int, buffer: int, *, item: int, offset: int, n: int) -> None:
        """Post a DATA frame of the ``n`` bytes put in :meth:`data_buffer`'s view; do not wait for it."""
        frame = self._ring[buffer]
        self._head(frame, [DATA, item, offset, n, 0])
        work = self.dist.isend(frame[: HEAD_BYTES + n], dst=peer, group=self.group, tag=DATA_TAG)
        self._in_flight[buffer] = (work, peer)
        self._next = 1 - buffer

    def drop(self, peer: int) -> None:
        """Forget the DATA frames in flight to ``peer`` (it failed): they are never awaited again, so the
        stream to the next peer does not inherit that failure."""
        for i, pending in enumerate(self._in_flight):
            if pending is not None and pending[1] == peer:
                self._stale.append((pending[0], self._ring[i]))
                self._in_flight[i] = None
                self._ring[i] = self._frame_buffer()
                self._ring_views[i] = self._ring[i].numpy().data.cast("B")

    def flush(self) -> None:
        """Wait until every DATA frame in flight is handed over."""
        for i in (self._next, 1 - self._next):
            self._settle(i)

    def _post(self, peer: int, tag: int) -> None:
        buf = self._frame_buffer()
        work = self.dist.irecv(buf, src=peer, group=self.group, tag=tag)
        self._posted.setdefault((peer, tag), deque()).append((work, buf))

    def _frame_in(self, peer: int, tag: int, timeout: float | None) -> tuple[list[int], memoryview]:
        posted = self._posted.setdefault((peer, tag), deque())
        while len(posted) < DEPTH:
            self._post(peer, tag)
        work, buf = posted.popleft()
        self._post(peer, tag)
        self._wait(work, buf, peer, "receive", timeout)
        header = [int(x) for x in buf[:HEAD_BYTES].view(self._torch.int64).tolist()]
        kind, _item, _value, length, more = header
        if kind not in _KINDS or not 0 <= length <= MAX_PAYLOAD or not 0 <= more <= 1 << 34:
            raise PeerFailed(peer, f"out of protocol: header {header}")
        return header, memoryview(buf.numpy()).cast("B")[HEAD_BYTES : HEAD_BYTES + length]

    def recv(self, peer: int, *, tag: int = DATA_TAG, timeout: float | None = None) -> Message:
        """The next message from ``peer``; its payload is a view of the receive buffer, no copy."""
        header, payload = self._frame_in(peer, tag, timeout)
        kind, item, value, _length, more = header
        if not more:
            return Message(kind, item, value, payload)
        parts = [bytes(payload)]
        while more:
            header, payload = self._frame_in(peer, tag, timeout)
            if header[:3] != [kind, item, value] or header[4] >= more:
                raise PeerFailed(peer, f"out of protocol: frame {header} within a message of kind {kind}")
            parts.append(bytes(payload))
            more = header[4]
        return Message(kind, item, value, b"".join(parts))

    def corrupt(self, path: str, first_chunk: bool, data: memoryview) -> None:
        """The test fault: flip one byte of the first chunk of a matching file (in place)."""
        if self._fault is None or not first_chunk or not data or not fnmatch.fnmatch(path, self._fault):
            return
        self._fault = None  # once
        data[len(data) // 2] ^= 0xFF

    @property
    def failed_ops(self) -> int:
        return len(self._stale)

    def close(self) -> None:
        """Destroy the subgroup (a local call; a peer that still talks to this rank fails at once). Kept
        when an operation failed: it may still be pending inside gloo with its buffers. The receives
        still posted for frames that never came are cancelled by the destruction."""
        if self._stale or self.group is None:
            return
        _GRAVEYARD.extend(self._posted.values())
        self._posted = {}
        try:
            self.dist.destroy_process_group(self.group)
        except Exception as exc:  # noqa: BLE001 - its sockets then close with the process
            logger.debug("the transfer group was not destroyed: %s", exc)
        self.group = None


def _parse_fault(raw: str, rank: int) -> str | None:
    parts = raw.split(":", 2)
    if len(parts) != 3 or parts[0] != "corrupt":
        return None
    try:
        who = int(parts[1])
    except ValueError:
        return None
    return parts[2] if who == rank else None
