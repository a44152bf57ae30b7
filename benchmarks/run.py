"""Run the benchmarks: ``python -m benchmarks.run --quick`` (``make bench``) or ``--full`` (``bench-full``).

One local Hub in its own process, limited to a known shared bandwidth, serves a ~21 MB sharded BERT.
Real worker processes (forked from one pre-imported host per stack, see :mod:`benchmarks.host`) load it
with real ``from_pretrained`` in three ways, side by side (:mod:`benchmarks.approaches`), for each cell
of: workers x cold/warm cache x kernel locks / locks that do nothing x stack. The server's request log
gives the bytes and requests of each cell. Results go to ``benchmarks/results/`` (``results.json``,
``README.md`` with the tables, ``time_to_all_ready.png``, ``bytes_served.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub_prefetch.testing.workers import QUIET_ENV as WORKER_QUIET_ENV

from .hosts import REPO_ROOT, Host, HostError

RESULTS = Path(__file__).resolve().parent / "results"
QUIET_ENV: dict[str, str | None] = {
    **WORKER_QUIET_ENV,
    "HF_TOKEN": None,
    "HF_HUB_OFFLINE": None,
    "TRANSFORMERS_OFFLINE": None,
}
METADATA_KINDS = ("revision", "tree", "head", "other")


@dataclass
class Context:
    """What every step of one run shares."""

    cfg: Config
    hub: Any
    repo: Any
    work: Path
    results: dict[str, Any]
    t0: float
    hosts: dict[str, Host | None] = field(default_factory=dict)


@dataclass
class Config:
    mode: str
    workers: list[int]
    workers_per_stack: dict[str, list[int]]
    stacks: list[str]
    locks: list[str]
    caches: list[str]
    approaches: list[str]
    bandwidth: float  # bytes per second, one link shared by every response
    size: str
    legacy_bin: bool
    cell_timeout: float
    budget_s: float
    micro_budget_s: float
    reps: int = 1
    reps_single: int = 3
    pythons: dict[str, str] = field(default_factory=dict)
    out: Path = RESULTS
    plots: bool = True
    micro: bool = True


def _default_python(stack: str) -> str:
    for candidate in (REPO_ROOT / ".venv" / stack / "bin" / "python", Path(f"/tmp/venvs/{stack}/bin/python")):
        if candidate.exists():
            return str(candidate)
    return str(REPO_ROOT / ".venv" / stack / "bin" / "python")


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--quick", action="store_const", dest="mode", const="quick", help="laptop run (default)"
    )
    group.add_argument(
        "--full", action="store_const", dest="mode", const="full", help="every axis, 64 workers"
    )
    p.add_argument("--workers", help="comma-separated worker counts (default: quick 1,8,32; full 1,8,32,64)")
    p.add_argument(
        "--workers-old", help="worker counts on the old stack (default: quick 1,8; full = --workers)"
    )
    p.add_argument(
        "--stacks",
        help="comma-separated names or name=python (default new,old; a stack without its venv is skipped)",
    )
    p.add_argument("--locks", default="kernel,noop", help="kernel,noop")
    p.add_argument("--caches", default="cold,warm", help="cold,warm")
    p.add_argument("--approaches", default="plain,reference,hub-prefetch")
    p.add_argument("--bandwidth-mb", type=float, default=40.0, help="shared link, MB/s (default 40)")
    p.add_argument(
        "--size", choices=("small", "medium", "big"), default="medium", help="model: 0.5, 13 or 21 MB"
    )
    p.add_argument("--no-legacy-bin", action="store_true", help="no pytorch_model.bin beside the shards")
    p.add_argument("--python-new", default=os.environ.get("BENCH_PYTHON_NEW") or _default_python("new"))
    p.add_argument("--python-old", default=os.environ.get("BENCH_PYTHON_OLD") or _default_python("old"))
    p.add_argument("--cell-timeout", type=float, default=300.0)
    p.add_argument("--budget", type=float, help="seconds; cells past it are skipped (quick 480, full 3600)")
    p.add_argument("--micro-budget", type=float, default=2.0, help="seconds per warm-path micro benchmark")
    p.add_argument("--reps", type=int, default=1, help="repetitions of each cell (median kept)")
    p.add_argument(
        "--reps-single", type=int, default=3, help="repetitions of the 1-worker cells (kernel locks)"
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-micro", action="store_true", help="skip the one-process warm-path measurements")
    a = p.parse_args(argv)
    mode = a.mode or "quick"
    workers = a.workers or ("1,8,32" if mode == "quick" else "1,8,32,64")
    stacks = a.stacks or "new,old"
    # "x alone" needs the 1-worker cells: the default lists start with 1.
    n_list = sorted({int(x) for x in workers.split(",") if x.strip()})
    old_spec = a.workers_old or (a.workers or ("1,8" if mode == "quick" else workers))
    per_stack = {"old": sorted({int(x) for x in old_spec.split(",") if x.strip()})}
    pythons = {"new": a.python_new, "old": a.python_old}
    stack_names = []
    for spec in stacks.split(","):
        name, _, python = spec.strip().partition("=")
        if name:
            stack_names.append(name)
        if python:
            pythons[name] = python
    return Config(
        mode=mode,
        workers=n_list,
        workers_per_stack=per_stack,
        stacks=stack_names,
        locks=[s for s in a.locks.split(",") if s],
        caches=[s for s in a.caches.split(",") if s],
        approaches=[s for s in a.approaches.split(",") if s],
        bandwidth=a.bandwidth_mb * 1e6,
        size=a.size,
        legacy_bin=not a.no_legacy_bin,
        cell_timeout=a.cell_timeout,
        budget_s=a.budget if a.budget is not None else (480.0 if mode == "quick" else 3600.0),
        micro_budget_s=a.micro_budget,
        reps=max(1, a.reps),
        reps_single=max(1, a.reps_single),
        pythons=pythons,
        out=a.out,
        plots=not a.no_plots,
        micro=not a.no_micro,
    )


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _cell_metrics(raw: dict[str, Any], records: list[Any], n: int) -> dict[str, Any]:
    workers = raw["workers"]
    t_go = raw["t_go"]
    ok = [w for w in workers if w.get("ok")]
    ends = [w["t_end"] for w in workers]
    durations = sorted(w["t_end"] - w["t_start"] for w in workers)
    counts = dict.fromkeys(("revision", "tree", "head", "get", "other"), 0)
    for r in records:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    gets = [r for r in records if r.kind == "get"]
    served = sum(r.bytes_sent for r in gets)
    last_byte = max((r.t_end or r.t_start for r in gets), default=None)
    rss = [w["maxrss_kb"] for w in workers if w.get("maxrss_kb")]
    fetched = [w["t_fetched"] for w in workers if w.get("t_fetched")]
    errors = sorted({f"{w.get('error_type')}: {w.get('error')}" for w in workers if not w.get("ok")})
    return {
        "n": n,
        "ok": len(ok),
        "all_ready_s": max(ends) - t_go if ends else None,
        "median_worker_s": durations[len(durations) // 2] if durations else None,
        "download_s": (last_byte - t_go) if last_byte is not None else 0.0,
        # Until every worker had verified files in hand (reference, hub-prefetch): coordination, not CPU.
        "files_ready_s": (max(fetched) - t_go) if fetched and len(fetched) == len(workers) else None,
        "bytes_served": served,
        "counts": counts,
        "metadata_requests": sum(counts[k] for k in METADATA_KINDS),
        "full_bodies": sum(1 for r in gets if r.complete and r.status == 200),
        "maxrss_mb_max": max(rss) / 1024 if rss else None,
        "maxrss_mb_median": sorted(rss)[len(rss) // 2] / 1024 if rss else None,
        "errors": errors[:3],
        "first_traceback": next((w.get("traceback") for w in workers if w.get("traceback")), None),
    }


def _hub_env(url: str, home: Path) -> dict[str, str | None]:
    env: dict[str, str | None] = dict(QUIET_ENV)
    env.update({"HF_ENDPOINT": url, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub")})
    return env


def run(cfg: Config) -> dict[str, Any]:
    from hub_prefetch.testing import LocalHub
    from hub_prefetch.testing.store import RepoStore

    from .model import build_repo

    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="hub-prefetch-bench-"))
    cfg.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "mode": cfg.mode,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "settings": {
            "workers": cfg.workers,
            "workers_per_stack": cfg.workers_per_stack,
            "stacks": cfg.stacks,
            "locks": cfg.locks,
            "caches": cfg.caches,
            "approaches": cfg.approaches,
            "bandwidth_bytes_per_s": cfg.bandwidth,
            "cell_timeout_s": cfg.cell_timeout,
            "budget_s": cfg.budget_s,
        },
        "loadavg_start": os.getloadavg(),
        "stacks": {},
        "cells": [],
        "micro": {},
        "skipped": [],
    }
    hub = None
    try:
        _log(f"building the benchmark repo in {work}")
        store = RepoStore(work / "store")
        repo = build_repo(store, size=cfg.size, legacy_bin=cfg.legacy_bin)
        results["repo"] = repo.to_dict()
        _log(
            f"repo {repo.repo_id}: {repo.bytes_needed / 1e6:.1f} MB needed "
            f"({repo.shards} shards), {repo.bytes_repo / 1e6:.1f} MB in the repo"
        )
        hub = LocalHub.spawn(store.root)
        hub.set_bandwidth(cfg.bandwidth, shared=True)
        results["floor_s"] = repo.bytes_needed / cfg.bandwidth
        ctx = Context(cfg, hub, repo, work, results, t0)
        try:
            _run_plan(ctx)
        finally:
            for host in ctx.hosts.values():
                if host is not None:
                    host.close()
    finally:
        if hub is not None:
            hub.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["duration_s"] = time.monotonic() - t0
    results["loadavg_end"] = os.getloadavg()
    return results


def _plan(cfg: Config) -> list[tuple[str, ...]]:
    """Every step in order of value per second: the small cells of every stack (the baselines and the
    comparison at a few workers), then the one-process micro benchmarks, then the large worker counts.
    When the time budget runs out, what is left out is the costliest, and the report lists it."""
    cells = []
    for stack in cfg.stacks:
        for locks in cfg.locks:
            for n in cfg.workers_per_stack.get(stack, cfg.workers):
                for approach in cfg.approaches:
                    cells.append((stack, locks, str(n), approach))
    order = {s: i for i, s in enumerate(cfg.stacks)}
    cells.sort(key=lambda c: (int(c[2]), order[c[0]], cfg.locks.index(c[1]), cfg.approaches.index(c[3])))
    small: list[tuple[str, ...]] = [("cell", *c) for c in cells if int(c[2]) <= 8]
    large: list[tuple[str, ...]] = [("cell", *c) for c in cells if int(c[2]) > 8]
    micro: list[tuple[str, ...]] = [("micro", stack) for stack in cfg.stacks] if cfg.micro else []
    return small + micro + large


def _host(ctx: Context, stack: str) -> Host | None:
    """The worker host of ``stack``, started on first use; None if the stack cannot run here."""
    if stack in ctx.hosts:
        return ctx.hosts[stack]
    ctx.hosts[stack] = None
    python = ctx.cfg.pythons.get(stack, "")
    if not python or not Path(python).exists():
        _log(f"stack {stack}: no interpreter at {python!r}; skipped")
        ctx.results["skipped"].append({"stack": stack, "reason": f"no interpreter at {python}"})
        return None
    _log(f"stack {stack}: starting the worker host under {python}")
    home = ctx.work / f"host-{stack}"
    home.mkdir()
    try:
        host = Host(python, _hub_env(ctx.hub.url, home), stderr_path=ctx.work / f"host-{stack}.stderr")
    except HostError as exc:
        _log(f"stack {stack}: host failed: {exc}")
        ctx.results["skipped"].append({"stack": stack, "reason": str(exc)})
        return None
    ctx.results["stacks"][stack] = {"python": python, **host.info["versions"]}
    _log(f"stack {stack}: {host.info['versions']}")
    ctx.hosts[stack] = host
    return host


def _run_plan(ctx: Context) -> None:
    for step in _plan(ctx.cfg):
        kind, stack = step[0], step[1]
        label = f"{stack}/micro" if kind == "micro" else f"{stack}/{step[2]}/{step[4]}/n={step[3]}"
        if time.monotonic() - ctx.t0 > ctx.cfg.budget_s:
            ctx.results["skipped"].append({"cell": label, "reason": "time budget spent"})
            continue
        host = _host(ctx, stack)
        if host is None:
            continue
        try:
            if kind == "micro":
                ctx.results["micro"][stack] = _micro(
                    ctx.cfg, host, ctx.hub, ctx.repo, ctx.work / f"micro-{stack}"
                )
            else:
                _run_cell(ctx, host, stack=stack, locks=step[2], n=int(step[3]), approach=step[4])
        except HostError as exc:
            # A dead or silent host ends this stack's run, not the report of what was measured.
            _log(f"stack {stack}: {exc}; its remaining cells are skipped")
            ctx.results["skipped"].append({"stack": stack, "reason": f"worker host failed: {exc}"})
            host.close()
            ctx.hosts[stack] = None


def _run_cell(ctx: Context, host: Host, *, stack: str, locks: str, n: int, approach: str) -> None:
    cfg = ctx.cfg
    label = f"{stack}/{locks}/{approach}/n={n}"
    # The kernel-lock 1-worker cells are the "one process alone" baselines: repeat them.
    reps = max(cfg.reps, cfg.reps_single) if n == 1 and locks == "kernel" else cfg.reps
    runs: dict[str, list[dict[str, Any]]] = {"cold": [], "warm": []}
    for rep in range(reps):
        home = ctx.work / "cells" / f"{stack}-{locks}-{approach}-{n}-{rep}"
        for cache, m in _cell_pair(cfg, host, ctx.hub, ctx.repo, home, n=n, approach=approach, locks=locks):
            m.update(stack=stack, locks=locks, cache=cache, approach=approach, rep=rep)
            runs[cache].append(m)
            _log(
                f"{label} {cache}: ok {m['ok']}/{n}, all-ready {m['all_ready_s']:.2f} s, "
                f"download {m['download_s']:.2f} s, {m['bytes_served'] / 1e6:.1f} MB, "
                f"requests {m['counts']}, load {m['loadavg']:.1f}"
                + (f" errors {m['errors']}" if m["errors"] else "")
            )
        shutil.rmtree(home, ignore_errors=True)
    for cache in ("cold", "warm"):
        if cache in cfg.caches and runs[cache]:
            ctx.results["cells"].append(_median_run(runs[cache]))


def _cell_pair(
    cfg: Config, host: Host, hub: Any, repo: Any, home: Path, *, n: int, approach: str, locks: str
) -> list[tuple[str, dict[str, Any]]]:
    """A cold run of ``n`` fresh workers over an empty cache, then a warm run of ``n`` fresh workers."""
    home.mkdir(parents=True)
    cmd = {
        "op": "cell",
        "approach": approach,
        "n": n,
        "cache_dir": str(home / "hub"),
        "repo_id": repo.repo_id,
        "subfolder": repo.subfolder,
        "fingerprint": repo.fingerprint,
        "noop_locks": locks == "noop",
        "env": {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HUB_PREFETCH_LOCK": "auto"},
        "timeout": cfg.cell_timeout,
    }
    out = []
    for cache in ("cold", "warm"):
        if cache == "warm" and "warm" not in cfg.caches:
            break
        load = os.getloadavg()[0]
        hub.reset_log()
        raw = host.call(cmd, timeout=cfg.cell_timeout)
        records = _settled_log(hub)
        m = _cell_metrics(raw, records, n)
        m["loadavg"] = load
        out.append((cache, m))
    return out


def _settled_log(hub: Any, wait_s: float = 10.0) -> list[Any]:
    """The request log once every response has ended: a body cut short by a worker that died is
    counted by the server only when it notices, a moment after the worker is gone."""
    deadline = time.monotonic() + wait_s
    while True:
        records = hub.requests()
        if all(r.t_end is not None for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median all-ready time (a failed run counts as slowest), with the spread."""
    ordered = sorted(runs, key=lambda m: (m["ok"] < m["n"], m["all_ready_s"] or float("inf")))
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["reps"] = len(runs)
    chosen["all_ready_all_s"] = [m["all_ready_s"] for m in runs]
    chosen["ok"] = min(m["ok"] for m in runs)  # a failure in any repetition shows
    chosen["errors"] = sorted({e for m in runs for e in m["errors"]})[:3]
    return chosen


def _micro(cfg: Config, host: Host, hub: Any, repo: Any, home: Path) -> dict[str, Any]:
    home.mkdir(parents=True)
    base = {
        "op": "micro",
        "repo_id": repo.repo_id,
        "subfolder": repo.subfolder,
        "cache_dir": str(home / "hub"),
        "commit": repo.commit,
        "env": {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HUB_PREFETCH_LOCK": "auto"},
        "budget_s": cfg.micro_budget_s,
        "timeout": 300,
    }
    out: dict[str, Any] = {}
    hub.set_bandwidth(None)
    try:
        for what in (
            "warmup",
            "prefetch",
            "pinned_load",
            "hub-prefetch",
            "plain",
            "snapshot_download",
            "lock_cost:flock",
            "lock_cost:lease",
            "lock_cost:reference-flock",
        ):
            hub.reset_log()
            answer = host.call({**base, "what": what}, timeout=300)
            records = hub.requests()
            if not answer.get("ok"):
                out[what] = {"error": answer.get("error")}
                _log(f"micro {what}: {answer.get('error')}")
                continue
            value = answer["value"]
            if what != "warmup" and "n" in value:
                # +1: the untimed first call
                value["requests_per_call"] = len(records) / (value["n"] + 1)
            out[what] = value
            _log(f"micro {what}: {json.dumps(value)[:200]}")
    finally:
        hub.set_bandwidth(cfg.bandwidth, shared=True)
    return out


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    _log(f"mode {cfg.mode}: workers {cfg.workers}, stacks {cfg.stacks}, locks {cfg.locks}")
    results = run(cfg)
    from .report import write_report

    paths = write_report(results, cfg.out, plots=cfg.plots)
    _log(f"done in {results['duration_s']:.0f} s; wrote {', '.join(str(p) for p in paths)}")
    failed = [c for c in results["cells"] if c["ok"] < c["n"]]
    if failed:
        _log(f"{len(failed)} cells had failed loads (see the table)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
