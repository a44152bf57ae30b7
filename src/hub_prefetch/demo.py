"""``hub-prefetch demo``: N real worker processes load one model on a cold cache, plain vs hub-prefetch.

Everything runs on this machine: a local Hub (:class:`~hub_prefetch.testing.LocalHub`, in a subprocess,
its link throttled so that downloads take long enough for the race to be real) serving a tiny sharded
BERT built by :func:`~hub_prefetch.testing.build_sharded_model`. Each run forks ``N`` workers from one
interpreter that imported torch and transformers once (:mod:`hub_prefetch.testing.forkpool`) and
releases them at the same instant; each loads ``AutoModel.from_pretrained(repo, subfolder=...)`` and
reports the fingerprint of the tensors it got, so a wrong or partial load counts as a failure.

Runs: plain on a cold cache, hub-prefetch on another cold cache (both under the chosen fault), then
hub-prefetch again on its now-warm cache, and plain again on its own cache. Figures come from the
workers' results, the Hub's request log and the cache folders.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ._cli_progress import StatusLine, human_bytes, human_seconds
from ._demo_faults import kill_downloader, plant_stale_lease
from .testing.workers import QUIET_ENV

if TYPE_CHECKING:
    from .testing import LocalHub

__all__ = ["FAULTS", "RunStats", "run_demo"]

REPO_ID = "demo/sharded-bert"
SUBFOLDER = "text_encoder"
SHARDS = 4
STALE_LEASE_TTL = 4.0

#: fault name -> what the demo does, as printed under the table.
FAULTS = {
    "none": "no fault: N cold loaders at once",
    "killed-downloader": "the process downloading is SIGKILLed mid-shard (it counts as killed, not failed)",
    "http-503": "the Hub answers 503 to every file request for the first 3 s of each cold run",
    "noop-flock": "flock() succeeds but excludes no one (as on Lustre, GPFS, NFS with local_lock, FUSE)",
    "stale-lease": "a holder on another host (node-17) died holding the repo lease "
    f"(ttl {STALE_LEASE_TTL:g} s); plain loaders have no such lock",
}

_WORKER_PRELOAD = ("transformers.models.bert.modeling_bert",)
_STALL_AFTER = 64 * 1024
_OUTAGE_S = 3.0
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


def _needed_bytes(store: Any, repo_id: str, commit: str) -> int:
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
            "HUB_PREFETCH_TESTING_NOOP_FLOCK": None,
        }
    )
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------ one round


@dataclass
class _Lane:
    """Workers of one kind (plain or protected) forked from one zygote, round after round."""

    target: str
    pool: Any
    home: Path

    def cache(self, index: int) -> Path:
        path = self.home / f"cache-{index}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def kwargs(self, cache: Path) -> dict[str, str]:
        return {"repo_id": REPO_ID, "subfolder": SUBFOLDER, "cache_dir": str(cache)}


def _run_round(
    lane: _Lane,
    stats: RunStats,
    *,
    hub: LocalHub,
    cache: Path,
    fault: str,
    cold: bool,
    fingerprint: str,
    first: bool,
) -> None:
    """One round: (re)fork the lane's workers on ``cache``, inject the fault, release them, tally."""
    pool = lane.pool
    if cold and fault == "stale-lease" and lane.target == "protected":
        plant_stale_lease(cache, REPO_ID, STALE_LEASE_TTL)
    if not first:
        pool.next_round(lane.kwargs(cache))
    hub.reset_log()
    outage = None
    fault_ids: list[int] = []
    if cold and fault == "http-503":
        # An overloaded Hub for a while, the same for both sides (a fixed count of 503s would land on
        # N plain workers once each, but all on hub-prefetch's single downloader).
        outage_id = hub.fail("*/resolve/*", status=503, count=-1)
        fault_ids.append(outage_id)
        outage = threading.Timer(_OUTAGE_S, lambda: hub.clear_fault(outage_id))
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
    stats.temp_files += sum(1 for _ in cache.rglob("*.incomplete"))
    backends = {str((r.value or {}).get("lock_backend")) for r in results if r.ok and r.value}
    if stats.lock_backend:
        backends.add(stats.lock_backend)
    stats.lock_backend = ", ".join(sorted(backends - {"None"})) or None
    stats.errors = dict(errors)


# ------------------------------------------------------------------------------------------ the table


def _cell(stats: RunStats, row: str) -> str:
    if row == "failed":
        alive = stats.workers * stats.rounds - stats.killed
        text = f"{stats.failed + stats.wrong_weights} of {alive}"
        return text + (f" (+{stats.killed} killed)" if stats.killed else "")
    if row == "time":
        done = [t for t in stats.round_times_s if t is not None]
        never = len(stats.round_times_s) - len(done)
        if not never:
            return human_seconds(float(statistics.median(done)))
        if not done:
            return f"never (last worker ended at {human_seconds(stats.last_done_s)})"
        return f"{human_seconds(float(statistics.median(done)))}; never in {never} of {stats.rounds} runs"
    if row == "bytes":
        ratio = stats.bytes_served / stats.bytes_needed if stats.bytes_needed else 0.0
        return f"{human_bytes(stats.bytes_served)} / {human_bytes(stats.bytes_needed)} ({ratio:.1f}x)"
    if row == "requests":
        return str(stats.hub_requests)
    if row == "temps":
        return str(stats.temp_files)
    raise KeyError(row)


_ROWS = (
    ("failed", "failed workers"),
    ("time", "time until all loaded"),
    ("bytes", "bytes served / needed"),
    ("requests", "Hub requests"),
    ("temps", "temp files left behind"),
)


def render_table(runs: list[RunStats]) -> str:
    header = ["", *[r.name for r in runs]]
    body = [[label, *[_cell(r, key) for r in runs]] for key, label in _ROWS]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ entry


def _run_lanes(
    args: argparse.Namespace, *, hub: LocalHub, root: Path, fingerprint: str, needed: int, status: StatusLine
) -> list[RunStats]:
    from .testing.forkpool import ForkedWorkers  # noqa: PLC0415 - optional testing extras

    n, fault, rounds = args.workers, args.fault, args.rounds
    noop = {"HUB_PREFETCH_TESTING_NOOP_FLOCK": "1"} if fault == "noop-flock" else {}
    lease = {"HUB_PREFETCH_LOCK": "lease"} if fault == "stale-lease" else {}
    lanes: dict[str, _Lane] = {}
    with contextlib.ExitStack() as stack:
        # Both zygotes import torch + transformers at once, before anything is timed.
        status.waiting(f"starting {n} plain and {n} protected workers")
        for target, extra in (("plain", noop), ("protected", {**noop, **lease})):
            home = root / target
            lane = _Lane(target, None, home)
            env = _worker_env(hub, home, extra)
            lane.pool = ForkedWorkers(
                f"hub_prefetch.testing.demo_targets:{target}",
                lane.kwargs(lane.cache(0)),
                n=n,
                env=env,
                timeout=150,
                preload=_WORKER_PRELOAD,
            )
            stack.callback(lane.pool.close)
            lane.pool.start_async()
            lanes[target] = lane
        for lane in lanes.values():
            lane.pool.wait_started()
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
                _run_round(
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
            _run_round(
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


def run_demo(args: argparse.Namespace, *, out: TextIO, err: TextIO, status: StatusLine) -> int:
    """The ``demo`` command; returns 0 when every hub-prefetch worker loaded the right weights."""
    try:
        from .testing import LocalHub, RepoStore, build_sharded_model  # noqa: PLC0415 - optional extras
    except ImportError as exc:
        err.write(
            f"hub-prefetch demo needs the testing extras ({exc.name} is missing): "
            "pip install 'hub-prefetch[testing,transformers,torch]'\n"
        )
        return 2
    n, fault, rounds = args.workers, args.fault, args.rounds
    root = Path(tempfile.mkdtemp(prefix="hub-prefetch-demo-"))
    started = time.monotonic()
    try:
        with status:
            status.waiting("building the tiny sharded model")
            store = RepoStore(root / "store")
            built = build_sharded_model(store, REPO_ID, subfolder=SUBFOLDER, shards=SHARDS)
            needed = _needed_bytes(store, REPO_ID, built.commit)
            hub = LocalHub.spawn(store.root)
            try:
                hub.set_bandwidth(args.bandwidth * 1e6 if args.bandwidth > 0 else None)
                runs = _run_lanes(
                    args, hub=hub, root=root, fingerprint=built.fingerprint, needed=needed, status=status
                )
            finally:
                hub.stop()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    protected = [r for r in runs if r.name.startswith("hub-prefetch")]
    ok = all(r.failed == 0 and r.wrong_weights == 0 for r in protected)
    code = 0 if ok else 1
    total = time.monotonic() - started
    description = FAULTS[fault].format(n=n)
    link = f"{args.bandwidth:g} MB/s" if args.bandwidth > 0 else "full speed"
    if args.json:
        data = {
            "ok": ok,
            "exit_code": code,
            "command": "demo",
            "workers": n,
            "rounds": rounds,
            "fault": fault,
            "fault_description": description,
            "bandwidth_mb_s": args.bandwidth,
            "repo_id": REPO_ID,
            "subfolder": SUBFOLDER,
            "bytes_needed": needed,
            "runs": [{**asdict(r), "all_loaded_s": r.all_loaded_s} for r in runs],
            "elapsed_s": total,
            "folder": str(root) if args.keep else None,
        }
        out.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        out.flush()
        return code
    lines = [
        (
            f"hub-prefetch demo: {n} worker processes load {REPO_ID} ({SUBFOLDER}, {SHARDS} shards, "
            f"{human_bytes(needed)}) with AutoModel.from_pretrained"
        ),
        f"local Hub at {link} (no network); fault: {fault} - {description}",
    ]
    if rounds > 1:
        lines.append(f"cold columns: {rounds} runs on fresh caches, summed (time: the median run)")
    lines += ["", render_table(runs), ""]
    for r in runs:
        for message, count in sorted(r.errors.items(), key=lambda kv: -kv[1]):
            lines.append(f"{r.name}: {count} x {message}")
    lock = protected[0].lock_backend if protected else None
    if lock:
        lines.append(f"hub-prefetch: repo lock backend {lock}")
    lines.append(f"done in {human_seconds(total)}" + (f"; files kept in {root}" if args.keep else ""))
    out.write("\n".join(lines) + "\n")
    out.flush()
    return code


def main() -> int:  # pragma: no cover - ``python -m hub_prefetch.demo``
    from .cli import main as cli_main  # noqa: PLC0415 - cli imports this module lazily

    return cli_main(["demo", *sys.argv[1:]])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
