"""A leader's receiver: takes every item this node lacks from an upstream leader, writes it to its own
partial file under the repo lock, hashes it while the bytes arrive, publishes it into huggingface_hub's
layout only when the listing's digest matches, then stamps the snapshot as a local prefetch would."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from .. import errors
from ..engine import Digest, Engine, partial_path, publish
from ..prefetch import PrefetchResult, Request, record_revision
from ..prefetch.sidefiles import mark_absent, store_listing, write_stamp
from ..verify import check_files
from .localcopy import LocalCopy
from .manifest import Item, Manifest
from .transfer import ABORT, CTRL_TAG, DATA, END, KEEPALIVE, MANIFEST, RESUME, Channel, Message, PeerFailed

__all__ = ["Receiver", "await_manifest"]

logger = logging.getLogger("hub_prefetch.distributed")


def await_manifest(ch: Channel, upstream: int, commit: str) -> Manifest:
    """The manifest ``upstream`` sends (keepalives skipped); it must be for ``commit``."""
    while True:
        msg = ch.recv(upstream)
        if msg.kind == KEEPALIVE:
            continue
        if msg.kind == ABORT:
            _aborted(upstream, msg)
        if msg.kind != MANIFEST:
            raise PeerFailed(upstream, f"expected the manifest, got message kind {msg.kind}")
        manifest = Manifest.from_bytes(bytes(msg.payload))
        if manifest.commit != commit:
            raise PeerFailed(upstream, f"offers commit {manifest.commit[:12]}, not {commit[:12]}")
        return manifest


def _aborted(upstream: int, msg: Message) -> None:
    if msg.value == 1 and msg.payload:
        raise errors.from_json(json.loads(bytes(msg.payload)), origin_rank=upstream)
    raise PeerFailed(upstream, "it gave up")


class Receiver:
    """Receives into the cache of ``pinned`` (the request pinned to ``commit``), holding its repo lock
    (``fence`` is that lock's fence); what it has is published in ``copy`` for this node's sender."""

    def __init__(
        self,
        pinned: Request,
        commit: str,
        *,
        copy: LocalCopy,
        channel: Channel,
        me: int,
        fence: Callable[[], None],
    ) -> None:
        self.pinned, self.commit, self.copy, self.ch, self.me = pinned, commit, copy, channel, me
        self.fence = fence
        self.snapshot = pinned.snapshot(commit)
        self.received: list[str] = []
        self.received_bytes = 0

    def from_peer(self, upstream: int) -> None:
        """Receive every item this node lacks from ``upstream``, in the order it sends them."""
        with self.copy.cond:
            have = [j for j, final in enumerate(self.copy.final) if final]
        self.ch.send(upstream, RESUME, 0, payload=json.dumps(have).encode(), tag=CTRL_TAG)
        self.copy.set_manifest(await_manifest(self.ch, upstream, self.commit))
        manifest = self.copy.manifest  # the first one this node got: the same commit, the same items
        assert manifest is not None
        todo = set(range(len(manifest.items))) - set(have)
        incoming: dict[int, _Incoming] = {}  # items arrive side by side, a chunk of each in turn
        try:
            while todo:
                msg = self.ch.recv(upstream)
                if msg.kind == KEEPALIVE:
                    continue
                if msg.kind == ABORT:
                    _aborted(upstream, msg)
                if msg.kind not in (DATA, END) or msg.item not in todo:
                    raise PeerFailed(upstream, f"out of protocol: kind {msg.kind} for item {msg.item}")
                item = incoming.get(msg.item)
                if item is None:
                    item = incoming[msg.item] = _Incoming(self, msg.item)
                if msg.kind == DATA:
                    item.write(upstream, msg)
                elif msg.value == 0:
                    item.reset()  # the sender's own copy was bad: it sends the item again
                else:
                    del incoming[msg.item]
                    todo.discard(msg.item)
                    item.finish(upstream)
        finally:
            for item in incoming.values():
                item.abandon()
        for name in manifest.hub_only:
            self.hub_file(name)
        logger.debug("rank %d: received %d bytes from rank %d", self.me, self.received_bytes, upstream)

    def published(self, j: int, item: Item) -> None:
        self.copy.set_final(j, self.snapshot / item.paths[0])
        self.received.extend(item.paths)
        self.received_bytes += item.size

    def hub_file(self, path: str) -> None:
        """One file straight from the Hub (pinned to the commit), through the engine under this receiver's
        repo lock: hashed as it streams, checked against the listing before it is published."""
        manifest = self.copy.manifest
        assert manifest is not None
        outcome = Engine(self.pinned, self.commit, manifest.listing, fence=self.fence).fetch([path])
        self.received.append(path)
        self.received_bytes += outcome.bytes_received

    def finish(self, req: Request, started: float) -> PrefetchResult:
        """Check every selected file is in place, record the listing and the revision, stamp."""
        manifest = self.copy.manifest
        assert manifest is not None
        fence = self.fence
        expected = [manifest.listing[p] for p in manifest.selected]
        problems = check_files(self.snapshot, expected, deep=False)
        if problems:
            raise errors.IncompleteSnapshotError(
                f"{req.label}: the snapshot received from peers is incomplete: "
                + ", ".join(f"{p.path} ({p.kind})" for p in problems[:5]),
                problems=[f"{p.path}: {p.kind}" for p in problems],
            )
        store_listing(self.pinned, manifest.commit, manifest.listing, fence=fence)
        record_revision(req, self.commit, fence=fence)
        mark_absent(self.pinned, self.commit, manifest.listing, fence=fence)
        sizes = {p: int(manifest.listing[p].size or 0) for p in manifest.selected}
        # Every transferred item was checked against its sha256 / git blob id on the way in.
        write_stamp(self.pinned, self.commit, sizes, deep=True, fence=fence)
        return PrefetchResult(
            repo_id=req.repo_id,
            repo_type=req.repo_type,
            revision=req.revision,
            commit=self.commit,
            snapshot_path=str(self.snapshot),
            files=manifest.selected,
            bytes_total=manifest.bytes_total,
            bytes_downloaded=self.received_bytes,
            downloaded=tuple(sorted(self.received)),
            elapsed_s=time.monotonic() - started,
        )


class _Incoming:
    """One item arriving from a peer: written to this node's partial file and hashed on the way in."""

    def __init__(self, rx: Receiver, j: int) -> None:
        manifest = rx.copy.manifest
        assert manifest is not None
        self.rx, self.j, self.item = rx, j, manifest.items[j]
        self.partial: Path = partial_path(rx.pinned, self.item.etag)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        self.fd: int | None = os.open(self.partial, flags, 0o644)
        self.digest, self.written = Digest(self.item.expected), 0

    def write(self, upstream: int, msg: Message) -> None:
        if msg.value != self.written or self.written + len(msg.payload) > self.item.size:
            raise PeerFailed(
                upstream, f"chunk at {msg.value} of {self.item.paths[0]}, expected {self.written}"
            )
        assert self.fd is not None
        view = memoryview(msg.payload)
        while view:  # a filling disk writes short first
            view = view[os.write(self.fd, view) :]
        self.digest.update(msg.payload)
        self.written += len(msg.payload)
        self.rx.copy.grow(self.j, self.partial, self.written)

    def reset(self) -> None:
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.digest, self.written = Digest(self.item.expected), 0
        self.rx.copy.restart(self.j)

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def abandon(self) -> None:
        """The peer failed mid-item: these bytes are void (a sender downstream starts the item again)."""
        self._close()
        self.rx.copy.restart(self.j)
        with contextlib.suppress(OSError):
            self.partial.unlink()

    def finish(self, upstream: int) -> None:
        rx, item = self.rx, self.item
        assert self.fd is not None
        if self.written == item.size and self.digest.matches():
            # Verified: the sender may end the item downstream while this node syncs and publishes it.
            rx.copy.set_final(self.j, self.partial)
            os.fsync(self.fd)
            self._close()
            publish(rx.pinned, rx.commit, item.etag, item.paths, self.partial, fence=rx.fence)
            rx.published(self.j, item)
            return
        self._close()
        logger.warning(
            "rank %d: %s from rank %d failed its check (%d of %d bytes, %s %s, expected %s); "
            "fetching it from the Hub",
            rx.me,
            item.paths[0],
            upstream,
            self.written,
            item.size,
            self.digest.kind,
            self.digest.hexdigest()[:12],
            self.digest.want[:12],
        )
        self.abandon()
        for name in item.paths:
            rx.hub_file(name)
        rx.copy.set_final(self.j, rx.snapshot / item.paths[0])
