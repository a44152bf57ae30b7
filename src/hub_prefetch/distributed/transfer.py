"""The wire of the peer fan-out: framed messages between two domain leaders over a gloo subgroup.

A message is a header of four int64 (kind, item, value, payload length) and, when the length is not
zero, a uint8 payload. Every send and receive waits at most ``timeout`` seconds (the lease TTL): a
peer that is gone fails at once (gloo reports the closed connection), one that stalls fails after the
timeout, never after the job's collective timeout. A peer that failed once is never used again by
this call: an operation that timed out may still be pending inside gloo, so its tensors are kept
alive (``_stale``) and that peer's channel is never reused.

For tests only, ``HUB_PREFETCH_FANOUT_FAULT=corrupt:<rank>:<path glob>`` makes rank ``<rank>`` flip
one byte of the first chunk it sends of a matching file (a chunk corrupted in transit).
"""

from __future__ import annotations

import fnmatch
import logging
import os
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
        self._fault = _parse_fault(os.environ.get(FAULT_ENV, ""), rank)

    def _wait(self, work: Any, keep: Any, peer: int, what: str, timeout: float | None) -> None:
        try:
            work.wait(timedelta(seconds=self.timeout if timeout is None else timeout))
        except Exception as exc:
            self._stale.append((work, keep))
            raise PeerFailed(peer, f"{what} failed: {str(exc).splitlines()[0][:200]}") from exc

    def send(
        self,
        peer: int,
        kind: int,
        item: int = 0,
        value: int = 0,
        payload: bytes | memoryview | Any = b"",
        *,
        tag: int = DATA_TAG,
    ) -> None:
        """``payload``: bytes, or a uint8 tensor (sent without a copy; reusable once this returns)."""
        torch = self._torch
        length = int(payload.numel()) if isinstance(payload, torch.Tensor) else len(payload)
        header = torch.tensor([kind, item, value, length], dtype=torch.int64)
        head = self.dist.isend(header, dst=peer, group=self.group, tag=tag)
        if not length:
            self._wait(head, header, peer, "send", None)
            return
        if isinstance(payload, torch.Tensor):
            body = payload
        else:
            body = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        # Both posted before either is awaited: one wait per message, so a sender that shares its
        # process (and the GIL) with a download waits for the interpreter once per chunk, not twice.
        work = self.dist.isend(body, dst=peer, group=self.group, tag=tag)
        self._wait(head, (header, body, work), peer, "send", None)
        self._wait(work, body, peer, "send", None)

    def buffer(self, size: int) -> Any:
        """A uint8 tensor to read a chunk into and :meth:`send` as it is."""
        return self._torch.empty(size, dtype=self._torch.uint8)

    def recv(self, peer: int, *, tag: int = DATA_TAG, timeout: float | None = None) -> Message:
        torch = self._torch
        header = torch.zeros(4, dtype=torch.int64)
        work = self.dist.irecv(header, src=peer, group=self.group, tag=tag)
        self._wait(work, header, peer, "receive", timeout)
        kind, item, value, length = (int(x) for x in header.tolist())
        if kind not in (MANIFEST, DATA, END, KEEPALIVE, ABORT, RESUME) or length < 0 or length > 1 << 31:
            self._stale.append((work, header))
            raise PeerFailed(peer, f"out of protocol: header {header.tolist()}")
        payload: bytes | memoryview = b""
        if length:
            body = torch.empty(length, dtype=torch.uint8)
            work = self.dist.irecv(body, src=peer, group=self.group, tag=tag)
            self._wait(work, body, peer, "receive", timeout)
            payload = memoryview(body.numpy()).cast("B")  # a view of the buffer: no copy
        return Message(kind, item, value, payload)

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
        when an operation failed: it may still be pending inside gloo with its buffers."""
        if self._stale or self.group is None:
            return
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
