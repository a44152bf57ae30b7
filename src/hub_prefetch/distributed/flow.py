"""One download per cache domain inside a ``torch.distributed`` job, without long collectives.

``prefetch_distributed(model, subfolders, ...)`` is :func:`hub_prefetch.prefetch` for every rank of a
process group. The ranks that share one cache form a *cache domain*: one per node for node-local caches,
one for the whole job when the cache sits on a shared filesystem. Exactly one rank per domain (its lowest)
downloads; the others wait on a file beside the cache, never on a collective, so a download of any
length cannot trip the collective timeout. The protocol::

    every rank   validate the request; write a probe file <cache>/.locks/hub_prefetch/probes/<token>
    collective   all_gather_object(host, cache realpath, token, request error)      (milliseconds)
    every rank   which of the gathered probes can I see in *my* cache folder?
    rank 0       resolve the revision to a commit (one metadata request, none if recently resolved)
    collective   all_gather_object(visibility, rank 0: commit or error)             (one request long)
    leader       heartbeat file dist-<run>/leader-<rank>.json; prefetch; outcome-<rank>.json
                 (several domains: rank 0's leader downloads, the others receive from peers,
                 see :mod:`.fanout`; the leaders' gloo subgroup is created right after the second
                 exchange, by every rank, so that collective is milliseconds long too)
    followers    poll the outcome file; take over (plain prefetch, which waits on the repo lock) when
                 the leader's heartbeat stops or its process is gone; raise the leader's typed error

A rank that cannot write its probe (a read-only cache) takes no part in the protocol: it serves the
agreed commit's verified snapshot with zero writes or raises :class:`~hub_prefetch.errors.CacheWriteError`
naming its cache and the commit; only a rank that can write leads a domain.

Domains come from the probes (ranks that see each other's probe share a cache) unless the caller
declares them with ``cache_scope="node"`` (one per host) or ``"shared"`` (one in all). A failed request
(bad input, no such repo, gated, ...) raises the same typed error on every rank. Every rank returns a
result for the commit rank 0 resolved, so the whole job loads one commit. Without an initialised
``torch.distributed`` (and no ``group``), this is plain :func:`~hub_prefetch.prefetch`, whose lock
(``flock`` or a heartbeat lease on shared filesystems) already coordinates independent processes.

``torch`` is an optional dependency: it is imported only when this function runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import cache, errors
from ..lock import HostIdentity
from ..prefetch import (
    PrefetchResult,
    Request,
    fetch_listing,
    known_commit,
    prefetch,
    record_revision,
    try_warm,
)
from ..prefetch import run as run_request
from ..settings import Settings
from .beacon import FORMAT, Beacon, leader_dead
from .domains import CacheScope, RankInfo, collect_garbage, plan_domains, probe_dir
from .fanout import Fanout, new_transfer_group
from .transfer import Channel

__all__ = ["prefetch_distributed"]

logger = logging.getLogger("hub_prefetch.distributed")

_DIST_PREFIX = "dist-"


@dataclass(frozen=True)
class _Run:
    req: Request
    rank: int
    leader: int
    domain: tuple[int, ...]
    commit: str | None
    folder: Path
    me: HostIdentity
    deep: bool | None
    local_files_only: bool

    @property
    def outcome_path(self) -> Path:
        return self.folder / f"outcome-{self.leader}.json"

    @property
    def beacon_path(self) -> Path:
        return self.folder / f"leader-{self.leader}.json"


def _resolve(req: Request, *, offline: bool) -> str | None:
    """The commit the whole job loads: from a fresh record on disk, else one metadata request.

    The listing it fetches is recorded in this (rank 0's) cache, so rank 0's own prefetch then needs
    no further metadata request.
    """
    commit = known_commit(req, any_age=offline)
    if commit is not None or offline:
        return commit
    commit, _listing = fetch_listing(req, req.revision)
    record_revision(req, commit)
    return commit


def _download(run: _Run) -> PrefetchResult:
    """The downloader's part; the repo lock inside the core flow keeps it to one per cache."""
    req = run.req
    result = run_request(req, local_files_only=run.local_files_only, deep=run.deep)
    if run.commit is not None and result.commit != run.commit:
        # The branch moved between rank 0's resolution and this domain's: load what rank 0 saw.
        logger.info(
            "%s: this cache resolved %s to %s, rank 0 to %s; fetching %s",
            req.label,
            req.revision,
            result.commit[:12],
            run.commit[:12],
            run.commit[:12],
        )
        pinned = dataclasses.replace(req, revision=run.commit)
        result = run_request(pinned, local_files_only=run.local_files_only, deep=run.deep)
        result = dataclasses.replace(result, revision=req.revision)
    return result


def _serve_unwritable(run: _Run) -> PrefetchResult:
    """A rank whose cache it cannot write takes no part in the file protocol (it could write neither
    heartbeat nor outcome): it serves the agreed commit's verified snapshot with zero writes, or raises
    the core flow's :class:`~hub_prefetch.errors.CacheWriteError` naming the cache and the commit."""
    if run.commit is None:  # offline and nothing recorded: the core flow says so, typed
        return run_request(run.req, local_files_only=run.local_files_only, deep=run.deep)
    pinned = dataclasses.replace(run.req, revision=run.commit)
    result = run_request(pinned, local_files_only=run.local_files_only, deep=run.deep)
    return dataclasses.replace(result, revision=run.req.revision)


def _lead(run: _Run, beat_interval: float, fan: Fanout | None = None) -> PrefetchResult:
    collect_garbage(run.folder.parent, _DIST_PREFIX)
    collect_garbage(probe_dir(run.req.settings.cache_dir), "")
    beacon = Beacon(run.beacon_path, run.rank, run.me, beat_interval)
    outcome: dict[str, Any] = {"version": FORMAT, "leader": run.rank}
    try:
        try:
            beacon.start()
        except errors.CacheWriteError as exc:
            # A read-only cache: a warm one still serves; followers that see no heartbeat check it themselves.
            logger.warning("rank %d: no heartbeat file (%s); going on without", run.rank, exc)
        # Several domains: this leader downloads (the source) or receives from peers, and serves the next.
        result = fan.run() if fan is not None else _download(run)
    except Exception as exc:
        outcome.update(ok=False, error=errors.to_json(exc))
        raise
    except BaseException:
        # Interrupted, not failed: the followers should take over at once, not inherit a KeyboardInterrupt.
        outcome.update(ok=False, abandoned=True)
        raise
    else:
        outcome.update(ok=True, commit=result.commit)
        return result
    finally:
        beacon.stop()
        with contextlib.suppress(errors.CacheWriteError):
            cache.atomic_write_json(run.outcome_path, outcome)
        if fan is not None:
            # The followers are released; now serve the next leader to the end (each step bounded).
            fan.abandon()
            fan.close()


def _follow(run: _Run, *, stale_after: float, poll: float) -> PrefetchResult:
    """Wait for the leader's outcome file; take over if the leader is gone."""
    s = run.req.settings
    start = time.monotonic()
    if run.commit is not None:
        # A warm cache needs no leader: a verified stamp of the agreed commit is enough (stats only).
        deep = s.deep_verify if run.deep is None else run.deep
        warm = try_warm(
            dataclasses.replace(run.req, revision=run.commit), deep=deep, any_age=False, started=start
        )
        if warm is not None:
            return dataclasses.replace(warm, revision=run.req.revision)
    pause = min(0.005, poll)
    deadline = None if s.lock_timeout is None or s.lock_timeout < 0 else start + s.lock_timeout
    next_log = start + s.wait_log_interval
    last_raw: bytes | None = None
    last_change = start
    takeover_reason = ""
    while True:
        outcome = cache.read_json(run.outcome_path, version=FORMAT)
        if outcome is not None:
            break
        now = time.monotonic()
        raw = cache.read_bytes_nofollow(run.beacon_path)
        if raw != last_raw:
            last_raw, last_change = raw, now
        beacon = None
        if raw:
            with contextlib.suppress(ValueError):
                beacon = json.loads(raw)
        reason = leader_dead(beacon, run.me) if isinstance(beacon, dict) else None
        if reason is None and now - last_change >= stale_after:
            what = "heartbeat" if raw else "first heartbeat"
            reason = f"its {what} stayed silent for {now - last_change:.1f} s"
        if reason is not None:
            takeover_reason = reason
            break
        if deadline is not None and now >= deadline:
            raise errors.LockTimeout(
                f"timed out after {now - start:.1f} s waiting for rank {run.leader} to prefetch "
                f"{run.req.label}",
                waited_s=round(now - start, 3),
                leader_rank=run.leader,
                repo_id=run.req.repo_id,
                revision=run.req.revision,
            )
        if now >= next_log:
            logger.info(
                "rank %d: waiting for rank %d to prefetch %s; waited %.0f s",
                run.rank,
                run.leader,
                run.req.label,
                now - start,
            )
            next_log = now + s.wait_log_interval
        time.sleep(pause)
        pause = min(pause * 2, poll)  # quick for a warm leader, steady for a long download
    waited = time.monotonic() - start
    if outcome is not None and outcome.get("ok"):
        commit = str(outcome.get("commit"))
        pinned = dataclasses.replace(run.req, revision=commit)
        # Warm by now: the stamp of that commit is on disk, so this is a few stats, no lock, no network.
        result = run_request(pinned, local_files_only=run.local_files_only, deep=run.deep)
        return dataclasses.replace(result, revision=run.req.revision, waited_s=waited)
    if outcome is not None and not outcome.get("abandoned"):
        error = outcome.get("error")  # a damaged outcome file still ends in a typed error
        raise errors.from_json(error if isinstance(error, dict) else {}, origin_rank=run.leader)
    if outcome is not None:
        takeover_reason = "it was interrupted"
    logger.warning(
        "rank %d: taking over the prefetch of %s from rank %d: %s",
        run.rank,
        run.req.label,
        run.leader,
        takeover_reason,
    )
    result = _download(run)
    return dataclasses.replace(result, waited_s=waited + result.waited_s)


def _world(group: Any) -> tuple[Any, int, int] | None:
    """(torch.distributed, rank, world size) when a process group is usable, else None."""
    try:
        import torch.distributed as dist  # noqa: PLC0415 - torch is optional
    except ImportError:
        if group is not None:
            raise
        return None
    if not dist.is_available() or (group is None and not dist.is_initialized()):
        return None
    return dist, int(dist.get_rank(group)), int(dist.get_world_size(group))


def _gather(dist: Any, obj: Any, size: int, group: Any) -> list[Any]:
    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj, group=group)
    return out


def prefetch_distributed(
    model: str,
    subfolders: Iterable[str] | str | None = None,
    *,
    revision: str | None = None,
    repo_type: str | None = None,
    variant: str | None = None,
    all_files: bool = False,
    include_root_metadata: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool | None = None,
    deep: bool | None = None,
    settings: Settings | None = None,
    lock_timeout: float | None = None,
    group: Any = None,
    cache_scope: CacheScope = "auto",
    poll_interval: float = 0.1,
    fanout: bool | None = None,
) -> PrefetchResult:
    """:func:`hub_prefetch.prefetch` on every rank of ``group`` (default: the default group), one download
    per cache domain, no long collective; every rank gets the same commit or the same typed error.

    Call it on every rank with the same arguments (``cache_dir`` may differ per node). The two
    collectives it makes are short: an exchange of a few facts, and one that lasts as long as rank 0's
    single metadata request. Waiting for the download happens on files, so any collective timeout is
    irrelevant to it. A follower takes over when its leader's heartbeat stays silent for
    ``HUB_PREFETCH_LEASE_TTL`` seconds, or at once when the leader's process is gone from the same host;
    ``HUB_PREFETCH_LOCK_TIMEOUT`` bounds the wait with :class:`~hub_prefetch.errors.LockTimeout`.

    With several cache domains, only rank 0's domain downloads from the Hub; the other domains' leaders
    receive the files from each other over point-to-point messages on a gloo subgroup of the leaders,
    verify each against the listing's digest and publish it into their own cache (:mod:`.fanout`).
    ``fanout=False`` (or ``HUB_PREFETCH_FANOUT=0``) makes every domain download from the Hub instead.
    """
    if cache_scope not in ("auto", "node", "shared"):
        raise errors.InvalidRequestError(f"cache_scope must be auto, node or shared, not {cache_scope!r}")
    world = _world(group)
    if world is None:
        return prefetch(
            model,
            subfolders,
            revision=revision,
            repo_type=repo_type,
            variant=variant,
            all_files=all_files,
            include_root_metadata=include_root_metadata,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            deep=deep,
            settings=settings,
            lock_timeout=lock_timeout,
        )
    dist, rank, size = world
    token_ = secrets.token_hex(16)
    req: Request | None = None
    own: Exception | None = None
    realpath = ""
    writable = True
    try:
        req = Request.build(
            model,
            subfolders,
            revision=revision,
            repo_type=repo_type,
            variant=variant,
            all_files=all_files,
            include_root_metadata=include_root_metadata,
            token=token,
            cache_dir=cache_dir,
            settings=settings,
            lock_timeout=lock_timeout,
        )
        realpath = os.path.realpath(req.settings.cache_dir)
        try:
            cache.atomic_write_bytes(probe_dir(req.settings.cache_dir) / token_, b"")
        except errors.CacheWriteError as exc:
            # A read-only cache is no error yet: it may hold a verified snapshot to serve.
            logger.debug("rank %d: no probe file (%s); serving this cache without writing", rank, exc)
            writable = False
    except Exception as exc:  # noqa: BLE001 - every rank raises it after the exchange
        own = exc
    me = HostIdentity.local(req.settings.host_id if req is not None else None)
    # Every rank enters both exchanges, even one whose request is bad: leaving early would hang the rest.
    mine = RankInfo(
        rank, me.host, realpath, token_, errors.to_json(own) if own is not None else None, writable
    )
    infos: list[RankInfo] = _gather(dist, mine, size, group)
    first_error = next((i for i in infos if i.error is not None), None)
    seen: list[str] = []
    commit: str | None = None
    offline = bool(local_files_only) or (req is not None and req.settings.offline)
    if first_error is None and req is not None:
        folder = probe_dir(req.settings.cache_dir)
        seen = [i.token for i in infos if os.path.lexists(folder / i.token)]
        if rank == 0:
            try:
                commit = _resolve(req, offline=offline)
            except Exception as exc:  # noqa: BLE001 - every rank raises it after the exchange
                own = exc
    # Whether this rank may take part in a peer fan-out (online, not switched off): all must agree.
    willing = not offline and req is not None and (req.settings.fanout if fanout is None else fanout)
    second: list[tuple[list[str], str | None, dict[str, Any] | None, bool]] = _gather(
        dist, (seen, commit, errors.to_json(own) if own is not None else None, willing), size, group
    )
    if req is not None:
        with contextlib.suppress(OSError):
            (probe_dir(req.settings.cache_dir) / token_).unlink()
    if own is not None and (first_error is None or first_error.rank == rank):
        raise own  # the same error the other ranks raise below, with its own traceback
    if first_error is not None:
        raise errors.from_json(first_error.error or {}, origin_rank=first_error.rank)
    if second[0][2] is not None:
        raise errors.from_json(second[0][2], origin_rank=0)
    assert req is not None  # no error anywhere, so this rank built its request
    commit = second[0][1]
    plan = plan_domains(infos, [s for s, _c, _e, _w in second], cache_scope)
    domain = plan.domain_of(rank)
    run_id = cache.key_hash("dist-run-v1", *sorted(i.token for i in infos))
    # Only a rank that can write leads: a follower waits for the leader's outcome file.
    writable_ranks = {i.rank for i in infos if i.writable}
    writers = [r for r in domain if r in writable_ranks]
    # The fan-out chain: the leader of every domain that has a writer (a domain that cannot write serves
    # its own disk, or raises, and takes no part in the transfers).
    leaders = sorted(w[0] for d in plan.domains if (w := [r for r in d if r in writable_ranks]))
    run = _Run(
        req=req,
        rank=rank,
        leader=writers[0] if writers else rank,
        domain=domain,
        commit=commit,
        folder=cache.lock_dir(req.settings.cache_dir) / f"{_DIST_PREFIX}{run_id}",
        me=me,
        deep=deep,
        local_files_only=bool(local_files_only),
    )
    if rank == 0:
        logger.info(
            "%s: %d rank(s) in %d cache domain(s) %s; commit %s",
            req.label,
            size,
            len(plan.domains),
            [list(d) for d in plan.domains],
            (commit or "?")[:12],
        )
    ttl = max(float(req.settings.lease_ttl), 0.1)
    fan: Fanout | None = None
    if commit is not None and len(leaders) > 1 and all(w for _s, _c, _e, w in second):
        # A collective over the default group (every rank, right after the exchange above: milliseconds).
        made = time.monotonic()
        sub, chain = new_transfer_group(dist, group, leaders, rank, ttl)
        made = (time.monotonic() - made) * 1e3
        logger.debug("rank %d: the leaders' transfer group took %.0f ms", rank, made)
        if run.leader == rank and rank in leaders:
            me_global = chain[leaders.index(rank)]
            fan = Fanout(
                req=req,
                commit=commit,
                deep=deep,
                channel=Channel(dist, sub, me_global, ttl),
                chain=chain,
                me=me_global,
                download=lambda: _download(run),
            )
    if not writable:  # after the transfer group: creating it is a collective every rank enters
        return _serve_unwritable(run)
    if run.leader == rank:
        return _lead(run, beat_interval=ttl / 3.0, fan=fan)
    return _follow(run, stale_after=ttl, poll=max(poll_interval, 0.005))
