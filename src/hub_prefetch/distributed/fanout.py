"""Peer fan-out: one cache domain downloads from the Hub, every other domain's leader gets the files
from a peer over ``torch.distributed`` point-to-point, pipelined along a chain of domain leaders.

The chain is the domain leaders in rank order; its head (rank 0's domain, which resolved the commit)
is the *source*. Each leader serves the next one while it is still receiving, so N domains take about
one download plus a few chunk times. This module chains the parts: :mod:`.manifest` (what moves),
:mod:`.localcopy` (what this node has), :mod:`.source` (the source following its own Hub download),
:mod:`.receiver`, :mod:`.sender`, and the wire, :mod:`.transfer`. The messages::

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

import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from ..lock import RepoLock
from ..prefetch import PrefetchResult, Request, try_warm
from .localcopy import LocalCopy
from .manifest import Manifest
from .receiver import Receiver, await_manifest
from .sender import WARM, Sender
from .source import download_exposed, in_snapshot
from .transfer import CTRL_TAG, RESUME, Channel, PeerFailed

__all__ = ["MAX_PEERS", "Fanout", "Manifest", "new_transfer_group"]

logger = logging.getLogger("hub_prefetch.distributed")

#: How many other leaders a receiver (a sender) tries before the Hub (giving up on its downstream).
MAX_PEERS = 3


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
        self.pinned = dataclasses.replace(req, revision=commit)
        self.deep = req.settings.deep_verify if deep is None else deep
        self.ch = channel
        self.chain = chain
        self.pos = chain.index(me)
        self.me = me
        self.download = download
        self.copy = LocalCopy()
        self.snapshot = self.pinned.snapshot(commit)
        downstreams = chain[self.pos + 1 : self.pos + 1 + MAX_PEERS]
        self._sender = Sender(channel, self.copy, downstreams, me)

    def run(self) -> PrefetchResult:
        self._sender.start()
        started = time.monotonic()
        if self.pos == 0:
            return download_exposed(self.pinned, self.commit, self.copy, self.download)
        warm = try_warm(self.pinned, deep=self.deep, any_age=False, started=started)
        if warm is not None:
            return self._warm(warm)
        return self._receive(started)

    def close(self) -> None:
        """Wait until the downstream is served (every step of it is bounded by the TTL), then let the
        leaders' subgroup go."""
        self._sender.join()
        self.ch.close()

    def abandon(self) -> None:
        """No more local progress (this leader is done, or failed): its sender serves what this node has
        and tells its downstream to look elsewhere for anything else."""
        if not self.copy.gave_up:
            self.copy.fail(None)

    def _upstreams(self) -> list[int]:
        return self.chain[max(0, self.pos - MAX_PEERS) : self.pos][::-1]

    def _warm(self, warm: PrefetchResult) -> PrefetchResult:
        """This cache already holds the snapshot: ask upstream for the manifest only, serve from disk."""
        for upstream in self._upstreams():
            try:
                self.ch.send(upstream, RESUME, WARM, tag=CTRL_TAG)
                manifest = await_manifest(self.ch, upstream, self.commit)
            except PeerFailed as exc:
                logger.info("rank %d: %s", self.me, exc)
                continue
            self.copy.set_manifest(manifest)
            for j, item in enumerate(manifest.items):
                path = in_snapshot(self.snapshot, item)
                if path is None:
                    self.copy.fail(None)
                    break
                self.copy.set_final(j, path)
            break
        else:
            self.copy.fail(None)
        return dataclasses.replace(warm, revision=self.req.revision)

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
            rx = Receiver(
                self.pinned,
                self.commit,
                copy=self.copy,
                channel=self.ch,
                me=self.me,
                fence=lock.fence(self.req.label),
            )
            for upstream in self._upstreams():
                try:
                    rx.from_peer(upstream)
                except PeerFailed as exc:
                    logger.warning("rank %d: %s; trying another source", self.me, exc)
                    continue
                return rx.finish(self.req, started)
            logger.warning(
                "rank %d: no peer could send %s; downloading the rest from the Hub", self.me, self.req.label
            )
            lock.release()
            released = True
            return download_exposed(self.pinned, self.commit, self.copy, self.download)
        except BaseException as exc:
            if not self.copy.gave_up:
                self.copy.fail_with(exc)
            raise
        finally:
            if not released:
                lock.release()
