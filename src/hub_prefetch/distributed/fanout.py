"""Peer fan-out: one cache domain downloads from the Hub, every other domain's leader gets the files
from a peer over ``torch.distributed`` point-to-point, pipelined along a chain of domain leaders.

The chain is the domain leaders in rank order; its head (rank 0's domain, which resolved the commit)
is the *source*. Each leader serves the next one while it is still receiving, so N domains take about
one download plus a few chunk times. The messages (:mod:`.transfer`)::

    downstream -> upstream   RESUME(item)           "send me the manifest, then the items from here"
    upstream -> downstream   MANIFEST(json)          commit, the commit's listing, the items in order
                             DATA(item, offset) ...  chunks of an item, as soon as the sender has them
                             END(item, ok)           ok=0: my copy was bad, the item starts again
                             KEEPALIVE               sent while waiting (a Hub download, a lock)
                             ABORT(ok, json)         ok=1: a typed error for every rank; 0: try elsewhere

A receiver writes each item into its own partial file under its repo lock, hashes it while the bytes
arrive, and publishes it into huggingface_hub's layout only when the listing's digest matches; then it
records the listing and the revision and stamps the selection as a local prefetch would. The source
reads what its own Hub download has published; a relay reads its own partial file as it grows.

Faults: every wait is bounded by the lease TTL (gloo reports a dead peer at once, a stalled one after
the TTL). A receiver whose upstream fails asks the leader before it (at most ``MAX_PEERS`` back), and
a sender whose downstream fails serves the leader after it, so a dead relay is skipped; with no peer
left the receiver downloads the rest from the Hub (plain :func:`~hub_prefetch.prefetch` under its repo
lock) and goes on serving its downstream from that. A chunk corrupted in transit fails the digest:
the receiver fetches that one file from the Hub and tells its own downstream to take it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from .. import cache, errors
from ..engine import Digest, Engine, etag_of, partial_dir, partial_path, publish
from ..lock import RepoLock
from ..prefetch import PrefetchResult, Request, record_revision, try_warm
from ..prefetch.flow import select
from ..prefetch.sidefiles import mark_absent, read_listing, store_listing, write_stamp
from ..verify import ExpectedFile, check_files
from .transfer import (
    ABORT,
    CTRL_TAG,
    DATA,
    END,
    KEEPALIVE,
    MANIFEST,
    RESUME,
    Channel,
    Message,
    PeerFailed,
)

__all__ = ["CHUNK", "MAX_PEERS", "Fanout", "Manifest", "new_transfer_group"]

logger = logging.getLogger("hub_prefetch.distributed")

#: Bytes per DATA message: a relay forwards a chunk as soon as it has it, so this is the pipeline's step.
CHUNK = 256 << 10
#: How many other leaders a receiver (a sender) tries before the Hub (giving up on its downstream).
MAX_PEERS = 3
#: RESUME's value from a leader whose cache is already warm: the manifest only, no items.
WARM = 1
_POLL = 0.02
_DIGEST = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


# ----------------------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class Item:
    """One blob to transfer: its etag, size and digest, and every selected path that points at it."""

    etag: str
    expected: ExpectedFile
    paths: tuple[str, ...]

    @property
    def size(self) -> int:
        return int(self.expected.size or 0)


@dataclass(frozen=True)
class Manifest:
    commit: str
    listing: dict[str, ExpectedFile]
    selected: tuple[str, ...]
    items: tuple[Item, ...]
    hub_only: tuple[str, ...]  # selected files the listing gives no digest for: each domain asks the Hub

    @classmethod
    def build(cls, commit: str, listing: dict[str, ExpectedFile], order: list[str]) -> Manifest:
        items: dict[str, list[str]] = {}
        hub_only: list[str] = []
        for path in order:
            etag = etag_of(listing[path])
            # A peer's manifest names files in this cache: only a real digest may name a blob.
            if etag is None or listing[path].size is None or not _DIGEST.fullmatch(etag):
                hub_only.append(path)
            else:
                items.setdefault(etag, []).append(path)
        return cls(
            commit,
            listing,
            tuple(sorted(order)),
            tuple(Item(etag, listing[paths[0]], tuple(paths)) for etag, paths in items.items()),
            tuple(hub_only),
        )

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "commit": self.commit,
                "listing": {p: e.to_json() for p, e in self.listing.items()},
                "order": [p for item in self.items for p in item.paths] + list(self.hub_only),
            }
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        data = json.loads(raw)
        listing = {p: ExpectedFile.from_json(p, e) for p, e in data["listing"].items()}
        return cls.build(str(data["commit"]), listing, [str(p) for p in data["order"]])

    @property
    def bytes_total(self) -> int:
        return sum(int(self.listing[p].size or 0) for p in self.selected)


def _manifest(
    req: Request, commit: str, read: Callable[[str], bytes], listing_of: Callable[[], Any]
) -> Manifest:
    listing: dict[str, ExpectedFile] = listing_of()
    selection = select(req, listing, read)
    order = sorted(selection.metadata) + sorted(set(selection.weights) - set(selection.metadata))
    return Manifest.build(commit, listing, order)


# ----------------------------------------------------------------------------- what this node has


class LocalCopy:
    """How much of each item this node has, and where: shared by its receiver and its sender."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.manifest: Manifest | None = None
        self.avail: list[int] = []
        self.path: list[Path | None] = []
        self.final: list[bool] = []
        self.gen: list[int] = []
        self.error: dict[str, Any] | None = None  # a typed error every rank should raise
        self.gave_up = False  # this node cannot serve (a local failure)

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

    def complete(self) -> bool:
        with self.cond:
            return self.manifest is not None and all(self.final)


# ----------------------------------------------------------------------------- the transfer group


def new_transfer_group(dist: Any, group: Any, leaders: list[int], rank: int, ttl: float) -> Any:
    """The gloo subgroup of the domain leaders, its timeout the lease TTL.

    ``dist.new_group`` is a collective over the default group: with ``group=None`` every rank calls this,
    at the point where every rank has just left the second exchange (milliseconds). With a caller's
    subgroup only its leaders call it (``use_local_synchronization``), since ranks outside that
    subgroup never get here. Returns the group and the leaders' global ranks.
    """
    glob = [int(dist.get_global_rank(group, r)) for r in leaders] if group is not None else list(leaders)
    if group is not None and rank not in leaders:
        return None, glob
    sub = dist.new_group(
        glob, timeout=timedelta(seconds=ttl), backend="gloo", use_local_synchronization=group is not None
    )
    return sub, glob


# ----------------------------------------------------------------------------- one leader's part


def _copy_of(req: Request, commit: str) -> Request:
    return dataclasses.replace(req, revision=commit)


def _in_snapshot(snapshot: Path, item: Item) -> Path | None:
    path = snapshot / item.paths[0]
    try:
        return path if path.stat().st_size == item.size else None
    except OSError:
        return None


def _everyone(exc: BaseException) -> bool:
    """Would every domain get this error from the Hub too (so every rank should raise it)?"""
    return isinstance(exc, (errors.HubAccessError, errors.InvalidRequestError, errors.HubUnavailableError))


class Fanout:
    """One domain leader's part of the fan-out: receive (or download), serve downstream, stamp.

    ``download`` is the domain's own Hub download (the distributed flow's), used by the source and as
    every receiver's last resort. :meth:`run` returns this domain's result as soon as its cache holds
    the snapshot; :meth:`close` then waits until its downstream is served.
    """

    def __init__(
        self,
        *,
        req: Request,
        commit: str,
        deep: bool | None,
        channel: Channel,
        chain: list[int],
        me: int,
        download: Callable[[], PrefetchResult],
    ) -> None:
        self.req = req
        self.commit = commit
        self.pinned = _copy_of(req, commit)
        self.deep = req.settings.deep_verify if deep is None else deep
        self.ch = channel
        self.chain = chain
        self.pos = chain.index(me)
        self.me = me
        self.download = download
        self.copy = LocalCopy()
        self.snapshot = self.pinned.snapshot(commit)
        self.ttl = channel.timeout
        self.received: list[str] = []
        self.received_bytes = 0
        self._lock_fence: Callable[[], None] = lambda: None  # the repo lock's fence, once this node holds it
        self.tailing = False  # True once this node streams its own Hub download (see _watch)
        self._sender = threading.Thread(target=self._serve, name="hub-prefetch-fanout-send", daemon=True)

    # -------------------------------------------------------------------------------- entry points
    def run(self) -> PrefetchResult:
        self._sender.start()
        started = time.monotonic()
        if self.pos == 0:
            return self._from_hub(started)
        warm = try_warm(self.pinned, deep=self.deep, any_age=False, started=started)
        if warm is not None:
            return self._warm(warm)
        return self._receive(started)

    def close(self) -> None:
        """Wait until the downstream is served (every step of it is bounded by the TTL)."""
        if self._sender.ident is not None:
            self._sender.join()

    def abandon(self) -> None:
        """No more local progress (this leader is done, or failed): its sender serves what this node has
        and tells its downstream to look elsewhere for anything else."""
        if not self.copy.gave_up:
            self.copy.fail(None)

    # -------------------------------------------------------------------------------- the source
    def _from_hub(self, started: float) -> PrefetchResult:
        """Download from the Hub in a thread (the domain's own flow, under its repo lock) and expose
        each file to the sender as it arrives: the source's part, and a receiver's last resort."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def work() -> None:
            try:
                box["result"] = self.download()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                box["error"] = exc
            finally:
                done.set()

        thread = threading.Thread(target=work, name="hub-prefetch-fanout-hub", daemon=True)
        thread.start()
        try:
            if self.copy.manifest is None:
                self.copy.set_manifest(self._manifest_while(done, box))
            self._watch(done)
        except BaseException as exc:  # noqa: BLE001 - raised below, after the download thread ends
            if not done.is_set():
                thread.join()
            if "error" not in box:
                box["error"] = exc
        thread.join()
        if "error" in box:
            failure: BaseException = box["error"]
            self.copy.fail(errors.to_json(failure) if _everyone(failure) else None)
            raise failure
        result: PrefetchResult = box["result"]
        self._watch(done)  # every item is published by now
        if not self.copy.complete():
            self.copy.fail(None)
        return result

    def _manifest_while(self, done: threading.Event, box: dict[str, Any]) -> Manifest:
        def wait_for(get: Callable[[], Any], what: str) -> Any:
            while True:
                finished = done.is_set()
                value = get()
                if value is not None:
                    return value
                if finished:
                    if "error" in box:
                        raise box["error"]
                    raise errors.IncompleteSnapshotError(
                        f"{self.req.label}: {what} is not in the cache after its download",
                        repo_id=self.req.repo_id,
                        revision=self.req.revision,
                    )
                time.sleep(_POLL)

        def listing() -> dict[str, ExpectedFile]:
            return cast(
                "dict[str, ExpectedFile]",
                wait_for(lambda: read_listing(self.pinned, self.commit), "the listing"),
            )

        def read(path: str) -> bytes:
            size = listing()[path].size

            def get() -> bytes | None:
                with contextlib.suppress(OSError):
                    target = self.snapshot / path
                    if size is None or target.stat().st_size == size:
                        return target.read_bytes()
                return None

            return cast("bytes", wait_for(get, path))

        return _manifest(self.pinned, self.commit, read, listing)

    def _watch(self, done: threading.Event) -> None:
        """Expose the Hub download to the sender until it ends: each item's growing temp file while it is
        written (huggingface_hub's ``blobs/<etag>[.<id>].incomplete``, the engine's partial file), the
        published file once it is in the snapshot. What the sender took from a temp file is checked
        against the digest as it goes out (:meth:`_stream_item`): a temp file written out of order or
        abandoned costs a resend from the published file, never a bad byte downstream.

        huggingface_hub writes a body in blocks of ``DOWNLOAD_CHUNK_SIZE`` (10 MB): a smaller file
        appears only whole, and is relayed then."""
        manifest = self.copy.manifest
        assert manifest is not None
        self.tailing = True
        blobs = cache.blobs_dir(self.req.settings.cache_dir, self.req.repo_type, self.req.repo_id)
        partials = partial_dir(self.pinned)
        while True:
            finished = done.is_set()
            for j, item in enumerate(manifest.items):
                if self.copy.final[j]:
                    continue
                if (path := _in_snapshot(self.snapshot, item)) is not None:
                    self.copy.set_final(j, path)
                elif (growing := _growing((blobs, partials), item.etag, self.copy.avail[j])) is not None:
                    self.copy.grow(j, *growing)
            if finished or self.copy.complete():
                return
            done.wait(_POLL)

    # -------------------------------------------------------------------------------- a warm leader
    def _warm(self, warm: PrefetchResult) -> PrefetchResult:
        """This cache already holds the snapshot: ask upstream for the manifest only, serve from disk."""
        for upstream in self._upstreams():
            try:
                self.ch.send(upstream, RESUME, WARM, tag=CTRL_TAG)
                manifest = self._await_manifest(upstream)
            except PeerFailed as exc:
                logger.info("rank %d: %s", self.me, exc)
                continue
            self.copy.set_manifest(manifest)
            for j, item in enumerate(manifest.items):
                path = _in_snapshot(self.snapshot, item)
                if path is None:
                    self.copy.fail(None)
                    break
                self.copy.set_final(j, path)
            break
        else:
            self.copy.fail(None)
        return dataclasses.replace(warm, revision=self.req.revision)

    # -------------------------------------------------------------------------------- a receiver
    def _upstreams(self) -> list[int]:
        return self.chain[max(0, self.pos - MAX_PEERS) : self.pos][::-1]

    def _await_manifest(self, upstream: int) -> Manifest:
        while True:
            msg = self.ch.recv(upstream)
            if msg.kind == KEEPALIVE:
                continue
            if msg.kind == ABORT:
                self._aborted(upstream, msg)
            if msg.kind != MANIFEST:
                raise PeerFailed(upstream, f"expected the manifest, got message kind {msg.kind}")
            manifest = Manifest.from_bytes(msg.payload)
            if manifest.commit != self.commit:
                raise PeerFailed(upstream, f"offers commit {manifest.commit[:12]}, not {self.commit[:12]}")
            return manifest

    def _aborted(self, upstream: int, msg: Message) -> None:
        if msg.value == 1 and msg.payload:
            raise errors.from_json(json.loads(msg.payload), origin_rank=upstream)
        raise PeerFailed(upstream, "it gave up")

    def _receive(self, started: float) -> PrefetchResult:
        lock = RepoLock(
            self.req.settings.cache_dir,
            self.req.repo_id,
            repo_type=self.req.repo_type,
            revision=self.commit,
            settings=self.req.settings,
        )
        lock.acquire()
        released = False
        try:
            fence = self._lock_fence = _fence(self.req, lock)
            for upstream in self._upstreams():
                try:
                    self._from_peer(upstream, fence)
                except PeerFailed as exc:
                    logger.warning("rank %d: %s; trying another source", self.me, exc)
                    continue
                return self._finish(fence, started)
            logger.warning(
                "rank %d: no peer could send %s; downloading the rest from the Hub", self.me, self.req.label
            )
            lock.release()
            released = True
            return self._from_hub(started)
        except BaseException as exc:
            if not self.copy.gave_up:
                typed = isinstance(exc, errors.HubPrefetchError) and _everyone(exc)
                self.copy.fail(errors.to_json(exc) if typed else None)
            raise
        finally:
            if not released:
                lock.release()

    def _from_peer(self, upstream: int, fence: Callable[[], None]) -> None:
        """Receive every item this node lacks from ``upstream``, in the order it sends them."""
        with self.copy.cond:
            have = [j for j, final in enumerate(self.copy.final) if final]
        self.ch.send(upstream, RESUME, 0, payload=json.dumps(have).encode(), tag=CTRL_TAG)
        self.copy.set_manifest(self._await_manifest(upstream))
        manifest = self.copy.manifest  # the first one this node got: the same commit, the same items
        assert manifest is not None
        todo = set(range(len(manifest.items))) - set(have)
        incoming: _Incoming | None = None
        try:
            while todo:
                msg = self.ch.recv(upstream)
                if msg.kind == KEEPALIVE:
                    continue
                if msg.kind == ABORT:
                    self._aborted(upstream, msg)
                if msg.kind not in (DATA, END) or (incoming is None and msg.item not in todo):
                    raise PeerFailed(upstream, f"out of protocol: kind {msg.kind} for item {msg.item}")
                if incoming is None:
                    incoming = _Incoming(self, msg.item)
                if msg.item != incoming.j:
                    raise PeerFailed(upstream, f"item {msg.item} while item {incoming.j} is unfinished")
                if msg.kind == DATA:
                    incoming.write(upstream, msg)
                elif msg.value == 0:
                    incoming.reset()  # the sender's own copy was bad: it sends the item again
                else:
                    incoming.finish(upstream, fence)
                    todo.discard(incoming.j)
                    incoming = None
        finally:
            if incoming is not None:
                incoming.abandon()
        for name in manifest.hub_only:
            self._hub_file(name)

    def _published(self, j: int, item: Item) -> None:
        self.copy.set_final(j, self.snapshot / item.paths[0])
        self.received.extend(item.paths)
        self.received_bytes += item.size

    def _hub_file(self, path: str) -> None:
        """One file straight from the Hub (pinned to the commit), through the engine under this receiver's
        repo lock: hashed as it streams, checked against the listing before it is published."""
        manifest = self.copy.manifest
        assert manifest is not None
        outcome = Engine(self.pinned, self.commit, manifest.listing, fence=self._lock_fence).fetch([path])
        self.received.append(path)
        self.received_bytes += outcome.bytes_received

    def _finish(self, fence: Callable[[], None], started: float) -> PrefetchResult:
        manifest = self.copy.manifest
        assert manifest is not None
        expected = [manifest.listing[p] for p in manifest.selected]
        problems = check_files(self.snapshot, expected, deep=False)
        if problems:
            raise errors.IncompleteSnapshotError(
                f"{self.req.label}: the snapshot received from peers is incomplete: "
                + ", ".join(f"{p.path} ({p.kind})" for p in problems[:5]),
                problems=[f"{p.path}: {p.kind}" for p in problems],
            )
        store_listing(self.pinned, manifest.commit, manifest.listing, fence=fence)
        record_revision(self.req, self.commit, fence=fence)
        mark_absent(self.pinned, self.commit, manifest.listing, fence=fence)
        sizes = {p: int(manifest.listing[p].size or 0) for p in manifest.selected}
        # Every transferred item was checked against its sha256 / git blob id on the way in.
        write_stamp(self.pinned, self.commit, sizes, deep=True, fence=fence)
        return PrefetchResult(
            repo_id=self.req.repo_id,
            repo_type=self.req.repo_type,
            revision=self.req.revision,
            commit=self.commit,
            snapshot_path=str(self.snapshot),
            files=manifest.selected,
            bytes_total=manifest.bytes_total,
            bytes_downloaded=self.received_bytes,
            downloaded=tuple(sorted(self.received)),
            elapsed_s=time.monotonic() - started,
        )

    # -------------------------------------------------------------------------------- the sender
    def _downstreams(self) -> list[int]:
        return self.chain[self.pos + 1 : self.pos + 1 + MAX_PEERS]

    def _serve(self) -> None:
        for downstream in self._downstreams():
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
        except _GaveUp:
            self._abort(downstream)

    def _wait(self, ready: Callable[[], bool], downstream: int) -> None:
        """Wait until ``ready()`` (under the copy's lock) or the copy fails; keep the peer alive."""
        copy = self.copy
        while True:
            with copy.cond:
                if copy.cond.wait_for(lambda: ready() or copy.gave_up, timeout=self.ttl / 4):
                    if copy.gave_up and not ready():
                        raise _GaveUp
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
            check = Digest(item.expected) if self.tailing and not again else None
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


class _Incoming:
    """One item arriving from a peer: written to this node's partial file and hashed on the way in."""

    def __init__(self, fan: Fanout, j: int) -> None:
        manifest = fan.copy.manifest
        assert manifest is not None
        self.fan, self.j, self.item = fan, j, manifest.items[j]
        self.partial = partial_path(fan.pinned, self.item.etag)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        self.fd: int | None = os.open(self.partial, flags, 0o644)
        self.digest, self.written = Digest(self.item.expected), 0

    def write(self, upstream: int, msg: Message) -> None:
        if msg.value != self.written or self.written + len(msg.payload) > self.item.size:
            raise PeerFailed(
                upstream, f"chunk at {msg.value} of {self.item.paths[0]}, expected {self.written}"
            )
        assert self.fd is not None
        os.write(self.fd, msg.payload)
        self.digest.update(msg.payload)
        self.written += len(msg.payload)
        self.fan.copy.grow(self.j, self.partial, self.written)

    def reset(self) -> None:
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.digest, self.written = Digest(self.item.expected), 0
        self.fan.copy.restart(self.j)

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def abandon(self) -> None:
        """The peer failed mid-item: these bytes are void (a sender downstream starts the item again)."""
        self._close()
        self.fan.copy.restart(self.j)
        with contextlib.suppress(OSError):
            self.partial.unlink()

    def finish(self, upstream: int, fence: Callable[[], None]) -> None:
        fan, item = self.fan, self.item
        assert self.fd is not None
        os.fsync(self.fd)
        self._close()
        if self.written == item.size and self.digest.matches():
            publish(fan.pinned, fan.commit, item.etag, item.paths, self.partial, fence=fence)
            fan._published(self.j, item)
            return
        logger.warning(
            "rank %d: %s from rank %d failed its check (%d of %d bytes, %s %s, expected %s); "
            "fetching it from the Hub",
            fan.me,
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
            fan._hub_file(name)
        fan.copy.set_final(self.j, fan.snapshot / item.paths[0])


class _GaveUp(Exception):
    pass


def _growing(folders: tuple[Path, ...], etag: str, avail: int) -> tuple[Path, int] | None:
    """The largest temp file of blob ``etag`` being downloaded, if it holds more than ``avail`` bytes:
    ``<etag>.incomplete`` / ``<etag>.<id>.incomplete`` (huggingface_hub) or ``<etag>`` (the engine's
    partial file, when one stream writes it front to back: a split download, which has a ``.parts``
    record beside it, writes ranges ahead of its front, so it is relayed once published)."""
    best: tuple[Path, int] | None = None
    for folder in folders:
        if folder.name == "partial" and (folder / f"{etag}.parts").exists():
            continue
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                name = entry.name
                if (name == etag and folder.name == "partial") or (
                    name.startswith(etag + ".") and name.endswith(".incomplete")
                ):
                    with contextlib.suppress(OSError):
                        size = entry.stat(follow_symlinks=False).st_size
                        if size > avail and (best is None or size > best[1]):
                            best = (Path(entry.path), size)
    return best


def _fence(req: Request, lock: RepoLock) -> Callable[[], None]:
    def fence() -> None:
        if not lock.still_held():
            raise errors.LockLostError(
                f"{req.label}: the repo lock {lock.file} was taken from this receiver",
                repo_id=req.repo_id,
                revision=req.revision,
            )

    return fence
