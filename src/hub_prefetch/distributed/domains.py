"""Cache domains: which ranks of a job share one cache, decided the same way on every rank.

Every rank writes a probe file into its cache's lock folder; after one exchange each rank says which
of the gathered probes it can see. Ranks that see each other's probe (or run on one host with one cache
path) share a domain; :func:`plan_domains` is a pure function of those gathered facts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .. import cache

__all__ = ["CacheScope", "DomainPlan", "RankInfo", "collect_garbage", "plan_domains", "probe_dir"]

CacheScope = Literal["auto", "node", "shared"]

_GC_AGE_S = 24 * 3600.0


@dataclass(frozen=True)
class RankInfo:
    """What one rank tells the others in the first exchange."""

    rank: int
    host: str
    cache_realpath: str
    token: str
    error: dict[str, Any] | None = None
    #: False when this rank could not write its probe: a read-only cache, which it serves on its own.
    writable: bool = True


@dataclass(frozen=True)
class DomainPlan:
    """Ranks grouped by the cache they share; ``leader`` of each domain is its lowest rank."""

    domains: tuple[tuple[int, ...], ...]

    def domain_of(self, rank: int) -> tuple[int, ...]:
        """The ranks that share ``rank``'s cache, leader first; ``KeyError`` for an unknown rank."""
        for domain in self.domains:
            if rank in domain:
                return domain
        raise KeyError(rank)

    def leader_of(self, rank: int) -> int:
        """The rank that downloads for ``rank``'s cache domain."""
        return self.domain_of(rank)[0]


def plan_domains(
    infos: Sequence[RankInfo], seen: Sequence[Sequence[str]], scope: CacheScope = "auto"
) -> DomainPlan:
    """Group ranks into cache domains, the same way on every rank (a pure function of gathered facts).

    ``seen[i]`` lists the probe tokens rank ``i`` found in its own cache folder. ``auto``: two ranks
    share a domain when either sees the other's probe, or they run on one host with one cache path.
    ``node``: one domain per (host, cache path). ``shared``: one domain in all.
    """
    ranks = [info.rank for info in infos]
    if scope == "shared":
        return DomainPlan((tuple(sorted(ranks)),))
    parent = {r: r for r in ranks}

    def find(r: int) -> int:
        while parent[r] != r:
            parent[r] = parent[parent[r]]
            r = parent[r]
        return r

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    by_place: dict[tuple[str, str], int] = {}
    for info in infos:
        place = (info.host, info.cache_realpath)
        if place in by_place:
            union(by_place[place], info.rank)
        else:
            by_place[place] = info.rank
    if scope == "auto":
        owner = {info.token: info.rank for info in infos}
        for info, tokens in zip(infos, seen, strict=True):
            for token in tokens:
                if token in owner:
                    union(info.rank, owner[token])
    groups: dict[int, list[int]] = {}
    for r in ranks:
        groups.setdefault(find(r), []).append(r)
    return DomainPlan(tuple(sorted(tuple(sorted(g)) for g in groups.values())))


def probe_dir(cache_dir: Path) -> Path:
    """Where the ranks of a job write their probe files."""
    return cache.lock_dir(cache_dir) / "probes"


def collect_garbage(folder: Path, prefix: str) -> None:
    """Drop leftovers of crashed runs (probes, run folders) older than a day; never fails the call."""
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if not entry.name.startswith(prefix):
                continue
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime > _GC_AGE_S:
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)
