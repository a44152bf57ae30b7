"""The demo's runs: two lanes of forked workers (plain and protected), round after round, and the tally.

Each lane is one :class:`~hub_prefetch.testing.forkpool.ForkedWorkers` zygote that imported torch and
transformers once; every round forks its ``N`` workers afresh on a cache folder, injects the fault
(:mod:`hub_prefetch.demo.faults`), releases them together and counts what they loaded, what the Hub
served and what was left behind in the cache.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..console import StatusLine
from ..testing.workers import QUIET_ENV
from .faults import NOOP_FLOCK_ENV, OUTAGE_S, STALE_LEASE_TTL, kill_downloader, plant_stale_lease

if TYPE_CHECKING:
    from ..testing import LocalHub

__all__ = [
    "REPO_ID",
    "SHARDS",
    "SUBFOLDER",
    "Lane",
    "RunStats",
    "count_temp_files",
    "needed_bytes",
    "run_lanes",
    "run_round",
    "start_lanes",
]

REPO_ID = "demo/sharded-bert"
SUBFOLDER = "text_encoder"
SHARDS = 4

_WORKER_PRELOAD = ("transformers.models.bert.modeling_bert",)
_STALL_AFTER = 64 * 1024
_CACHE_PATH = re.compile(r"/\S*/models--")


@dataclass
class RunStats:
    """One column of the table: one or more runs (``rounds``) of ``workers`` workers each."""

    name: str
    workers: int
    rounds: int = 0
    ok: int = 0
    failed: int = 0
    wrong_weights: int = 0
    killed: int = 0
    round_times_s: list[float | None] = field(default_factory=list)
    last_done_s: float = 0.0
    bytes_served: int = 0
    bytes_needed: int = 0
    hub_requests: int = 0
    requests_by_kind: dict[str, int] = field(default_factory=dict)
    temp_files: int = 0
    lock_backend: str | None = None
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def all_loaded_s(self) -> float | None:
        """Median over rounds of the time until every worker had loaded; None if a round never got there."""
        times = self.round_times_s
        if not times or any(t is None for t in times):
            return None
        return float(statistics.median(t for t in times if t is not None))


# ------------------------------------------------------------------------------------------ setup


def needed_bytes(store: Any, repo_id: str, commit: str) -> int:
    files = store.files(repo_id, commit)
    return sum(f.size for p, f in files.items() if p.startswith(f"{SUBFOLDER}/"))


def _worker_env(hub: LocalHub, home: Path, extra: dict[str, str]) -> dict[str, str | None]:
    env: dict[str, str | None] = dict(QUIET_ENV)
    env.update(
        {
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(home / "hub"),
            "HF_ENDPOINT": hub.url,
            "HF_TOKEN": None,
            "HF_HUB_OFFLINE": None,
            "TRANSFORMERS_OFFLINE": None,
            "HUB_PREFETCH_LOCK": None,
            "HUB_PREFETCH_LOCK_TIMEOUT": "120",
            NOOP_FLOCK_ENV: None,
        }
    )
    env.update(extra)
    return env


def count_temp_files(cache: Path) -> int:
    """Download leftovers in ``cache``: huggingface_hub's ``*.incomplete`` files and the partial files
    (and their resume records) of hub-prefetch's engine."""
    incomplete = sum(1 for _ in cache.rglob("*.incomplete"))
    partial = sum(1 for p in cache.glob("*/.hub_prefetch/partial/*") if p.is_file())
    return incomplete + partial


def start_lanes(
    hub: LocalHub,
    root: Path,
    stack: contextlib.ExitStack,
    *,
    workers: int,
    envs: dict[str, dict[str, str]],
    first_kwargs: dict[str, dict[str, str]] | None = None,
) -> dict[str, Lane]:
    """Start the plain and the protected zygote side by side (each imports torch + transformers once,
    before anything is timed) and wait until both have forked their first workers."""
    from ..testing.forkpool import ForkedWorkers  # noqa: PLC0415 - optional testing extras

    lanes: dict[str, Lane] = {}
    for target in ("plain", "protected"):
        home = root / target
        lane = Lane(target, None, home)
        lane.pool = ForkedWorkers(
            f"hub_prefetch.demo.targets:{target}",
            lane.kwargs(lane.cache(0), (first_kwargs or {}).get(target)),
            n=workers,
            env=_worker_env(hub, home, envs.get(target, {})),
            timeout=150,
            preload=_WORKER_PRELOAD,
        )
        stack.callback(lane.pool.close)
        lane.pool.start_async()
        lanes[target] = lane
    for lane in lanes.values():
        lane.pool.wait_started()
    return lanes


# ------------------------------------------------------------------------------------------ one round


@dataclass
class Lane:
    """Workers of one kind (plain or protected) forked from one zygote, round after round."""

    target: str
    pool: Any
    home: Path

    def cache(self, index: int) -> Path:
        path = self.home / f"cache-{index}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def kwargs(self, cache: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
        """The target's keyword arguments; ``env`` is applied inside each forked worker (per round)."""
        kwargs: dict[str, Any] = {"repo_id": REPO_ID, "subfolder": SUBFOLDER, "cache_dir": str(cache)}
        if env:
            kwargs["env"] = dict(env)
        return kwargs


def run_round(
    lane: Lane,
    stats: RunStats,
    *,
    hub: LocalHub,
    cache: Path,
    fault: str,
    cold: bool,
    fingerprint: str,
    first: bool,
    env: dict[str, str] | None = None,
) -> None:
    """One round: (re)fork the lane's workers on ``cache``, inject the fault, release them, tally.

    ``env`` goes to the workers of this round (the first round's workers were forked with the pool's own
    kwargs, which must carry the same ``env``)."""
    pool = lane.pool
    if cold and fault == "stale-lease" and lane.target == "protected":
        plant_stale_lease(cache, REPO_ID, STALE_LEASE_TTL)
    if not first:
        pool.next_round(lane.kwargs(cache, env))
    hub.reset_log()
    outage = None
    fault_ids: list[int] = []
    if cold and fault == "http-503":
        # An overloaded Hub for a while, the same for both sides (a fixed count of 503s would land on
        # N plain workers once each, but all on hub-prefetch's single downloader).
        outage_id = hub.fail("*/resolve/*", status=503, count=-1)
        fault_ids.append(outage_id)
        outage = threading.Timer(OUTAGE_S, lambda: hub.clear_fault(outage_id))
    stop = threading.Event()
    killer = None
    killed: list[int] = []
    if cold and fault == "killed-downloader":
        stall_id = hub.stall("*.safetensors", after_bytes=_STALL_AFTER, count=1)
        fault_ids.append(stall_id)
        killer = threading.Thread(
            target=kill_downloader,
            args=(hub, pool, cache),
            kwargs={"stall_id": stall_id, "stop": stop, "killed": killed},
            daemon=True,
        )
        killer.start()
    t_go = pool.go()
    if outage is not None:
        outage.start()
    results = pool.results()
    if outage is not None:
        outage.cancel()
    stop.set()
    if killer is not None:
        killer.join(5)
    for fault_id in fault_ids:  # only ours: clear_faults() would lift the bandwidth limit too
        hub.clear_fault(fault_id)
    records = hub.requests()

    stats.rounds += 1
    errors: Counter[str] = Counter(stats.errors)
    failed_before = stats.failed + stats.wrong_weights
    for r in results:
        if r.error_type == "Killed" or r.index in killed:
            stats.killed += 1
        elif not r.ok:
            stats.failed += 1
            first_line = (r.error or "").strip().splitlines()[0] if r.error else ""
            first_line = _CACHE_PATH.sub(".../models--", first_line)  # one line per error, not per cache
            errors[f"{r.error_type}: {first_line[:160]}"] += 1
        elif (r.value or {}).get("fingerprint") != fingerprint:
            stats.wrong_weights += 1
            errors["loaded weights that differ from the repo's"] += 1
        else:
            stats.ok += 1
    ends = [r.t_end - t_go for r in results if r.error_type != "Killed"]
    last = max(ends, default=0.0)
    stats.last_done_s = max(stats.last_done_s, last)
    stats.round_times_s.append(last if stats.failed + stats.wrong_weights == failed_before else None)
    stats.bytes_served += sum(r.bytes_sent for r in records if r.kind == "get")
    stats.hub_requests += len(records)
    by_kind = Counter(stats.requests_by_kind)
    by_kind.update(r.kind for r in records)
    stats.requests_by_kind = dict(by_kind)
    stats.temp_files += count_temp_files(cache)
    backends = {str((r.value or {}).get("lock_backend")) for r in results if r.ok and r.value}
    if stats.lock_backend:
        backends.add(stats.lock_backend)
    stats.lock_backend = ", ".join(sorted(backends - {"None"})) or None
    stats.errors = dict(errors)


# ------------------------------------------------------------------------------------------ all rounds


def run_lanes(
    hub: LocalHub,
    root: Path,
    *,
    workers: int,
    fault: str,
    rounds: int,
    fingerprint: str,
    needed: int,
    status: StatusLine,
) -> list[RunStats]:
    """Start both lanes, run ``rounds`` cold rounds per lane under ``fault``, then one warm round each.

    Returns the four columns: plain (cold), hub-prefetch (cold), plain (warm), hub-prefetch (warm).
    """
    n = workers
    noop = {NOOP_FLOCK_ENV: "1"} if fault == "noop-flock" else {}
    lease = {"HUB_PREFETCH_LOCK": "lease"} if fault == "stale-lease" else {}
    with contextlib.ExitStack() as stack:
        status.waiting(f"starting {n} plain and {n} protected workers")
        lanes = start_lanes(hub, root, stack, workers=n, envs={"plain": noop, "protected": {**noop, **lease}})
        cold = {
            t: RunStats(name=f"{'plain' if t == 'plain' else 'hub-prefetch'} (cold)", workers=n)
            for t in lanes
        }
        warm = {
            t: RunStats(name=f"{'plain' if t == 'plain' else 'hub-prefetch'} (warm)", workers=n)
            for t in lanes
        }
        for index in range(rounds):
            for target, lane in lanes.items():
                status.waiting(f"{cold[target].name}: run {index + 1} of {rounds}, {n} workers loading")
                run_round(
                    lane,
                    cold[target],
                    hub=hub,
                    cache=lane.cache(index),
                    fault=fault,
                    cold=True,
                    fingerprint=fingerprint,
                    first=index == 0,
                )
        for target, lane in lanes.items():
            status.waiting(f"{warm[target].name}: {n} workers loading")
            run_round(
                lane,
                warm[target],
                hub=hub,
                cache=lane.cache(rounds - 1),
                fault="none",
                cold=False,
                fingerprint=fingerprint,
                first=False,
            )
    runs = [cold["plain"], cold["protected"], warm["plain"], warm["protected"]]
    for r in runs:
        r.bytes_needed = needed * r.rounds
    return runs
