"""Peer fan-out against "every node downloads": ``python -m benchmarks.fanout`` (a cell of ``make bench``).

A torch.distributed job of 1-8 simulated nodes (one rank each by default; gloo on 127.0.0.1, a host
identity and a cache folder per node, real processes) loads the benchmark BERT with
``prefetch_distributed`` then ``from_pretrained(local_files_only=True)``, behind one throttled Hub
uplink (the local Hub in its own process, ``--bandwidth-mb`` shared by every response). For each node
count, two runs: the fan-out (one domain downloads, the others receive from peers) and
``fanout=False`` (every domain downloads). The Hub's request log gives the bytes; each rank reports
when it had loaded. Printed: Hub bytes / model, time until every rank loaded, that time / the
one-node time, and fan-out / every-node-downloads. Written: ``results/fanout.json``, ``fanout.md``,
``fanout.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hub_prefetch.testing.workers import QUIET_ENV

from .hosts import REPO_ROOT
from .model import build_repo
from .run import RESULTS, _default_python

PRELOAD = ("torch.distributed", "transformers", "hub_prefetch.distributed")


def rank_main(
    *,
    rank: int,
    world: int,
    init_file: str,
    host_id: str,
    cache_dir: str,
    fanout: bool,
    repo_id: str,
    subfolder: str,
) -> dict[str, Any]:
    """One rank of the job: join the group, line up, prefetch_distributed, load; report the times."""
    os.environ["HUB_PREFETCH_HOST_ID"] = host_id
    from datetime import timedelta

    import torch.distributed as dist
    import transformers

    from hub_prefetch.distributed import prefetch_distributed

    transformers.logging.set_verbosity_error()
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=300)
    )
    dist.barrier()
    t0 = time.time()
    result = prefetch_distributed(repo_id, [subfolder], cache_dir=cache_dir, fanout=fanout)
    t1 = time.time()
    transformers.AutoModel.from_pretrained(
        repo_id, subfolder=subfolder, revision=result.commit, cache_dir=cache_dir, local_files_only=True
    )
    t2 = time.time()
    dist.barrier()
    dist.destroy_process_group()
    return {
        "rank": rank,
        "t0": t0,
        "t1": t1,
        "t2": t2,
        "commit": result.commit,
        "downloaded": len(result.downloaded),
    }


def _cell(
    hub: Any, repo: Any, work: Path, *, python: str, nodes: int, per_node: int, fanout: bool, timeout: float
) -> dict[str, Any]:
    from hub_prefetch.testing import WorkerPool

    tag = f"{nodes}x{per_node}-{'fanout' if fanout else 'each'}"
    folder = work / tag
    hosts = [f"node-{n}" for n in range(nodes) for _ in range(per_node)]
    kwargs = [
        {
            "rank": r,
            "world": len(hosts),
            "init_file": str(folder / "store"),
            "host_id": host,
            "cache_dir": str(folder / host / "hub"),
            "fanout": fanout,
            "repo_id": repo.repo_id,
            "subfolder": repo.subfolder,
        }
        for r, host in enumerate(hosts)
    ]
    env: dict[str, str | None] = dict(QUIET_ENV)
    env.update(
        {
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(folder / "hf-home"),
            "HF_HUB_CACHE": None,
            "HF_TOKEN": None,
            "HF_HUB_OFFLINE": None,
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)]),
        }
    )
    folder.mkdir(parents=True)
    hub.reset_log()
    with WorkerPool(
        "benchmarks.fanout:rank_main",
        kwargs,
        n=len(kwargs),
        env=env,
        timeout=timeout,
        preload=PRELOAD,
        python=python,
        cwd=REPO_ROOT,
    ) as pool:
        pool.wait_ready()
        pool.go()
        results = pool.results()
    bad = [(r.index, r.error_type, r.error, r.stderr[-1500:]) for r in results if not r.ok]
    if bad:
        raise RuntimeError(f"{tag}: {bad}")
    values = [r.value for r in results]
    lo, hi = min(v["t0"] for v in values), max(v["t2"] for v in values)
    time.sleep(0.5)  # the log entry of the last body is written when the response ends
    gets = [q for q in hub.requests() if q.kind == "get"]
    served = sum(q.bytes_sent for q in gets)
    assert len({v["commit"] for v in values}) == 1
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "nodes": nodes,
        "ranks_per_node": per_node,
        "mode": "fanout" if fanout else "each",
        "hub_bytes": served,
        "hub_ratio": served / repo.bytes_needed,
        "all_ready_s": hi - lo,
        "prefetched_s": max(v["t1"] for v in values) - lo,
    }


def _table(cells: list[dict[str, Any]]) -> str:
    """Per cell: Hub bytes / model; files ready on every rank and everything loaded, in seconds and as a
    ratio to the one-node run; the fan-out's time as a ratio to every node downloading."""
    one = min(cells, key=lambda c: c["nodes"])
    rows = [
        (
            "| nodes | ranks/node | mode | Hub bytes / model | files ready (s) | / one node | all loaded (s) "
            "| / one node | fan-out / each (files, loaded) |"
        ),
        "|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    by = {(c["nodes"], c["mode"]): c for c in cells}
    for c in cells:
        other = by.get((c["nodes"], "each"))
        ratio = ""
        if c["mode"] == "fanout" and other is not None:
            files = c["prefetched_s"] / other["prefetched_s"]
            ratio = f"{files:.2f}, {c['all_ready_s'] / other['all_ready_s']:.2f}"
        rows.append(
            f"| {c['nodes']} | {c['ranks_per_node']} | {c['mode']} | {c['hub_ratio']:.2f} | "
            f"{c['prefetched_s']:.2f} | {c['prefetched_s'] / one['prefetched_s']:.2f} | "
            f"{c['all_ready_s']:.2f} | {c['all_ready_s'] / one['all_ready_s']:.2f} | {ratio} |"
        )
    return "\n".join(rows)


def _plot(cells: list[dict[str, Any]], out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    modes = (("fanout", "fan-out (one Hub download)", "C0"), ("each", "every node downloads", "C1"))
    for mode, label, color in modes:
        sel = sorted((c for c in cells if c["mode"] == mode), key=lambda c: c["nodes"])
        xs = [c["nodes"] for c in sel]
        left.plot(xs, [c["hub_ratio"] for c in sel], marker="o", color=color, label=label)
        right.plot(
            xs, [c["prefetched_s"] for c in sel], marker="o", color=color, label=f"{label}: files ready"
        )
        right.plot(
            xs,
            [c["all_ready_s"] for c in sel],
            marker="x",
            linestyle="--",
            color=color,
            label=f"{label}: loaded",
        )
    left.set(xlabel="nodes (node-local caches)", ylabel="Hub bytes / model size", title="Bytes from the Hub")
    right.set(xlabel="nodes (node-local caches)", ylabel="seconds", title="Time until every rank is ready")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out / "fanout.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fanout", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", default="1,2,4,8", help="comma-separated node counts (default 1,2,4,8)")
    p.add_argument("--ranks-per-node", type=int, default=1)
    p.add_argument("--bandwidth-mb", type=float, default=10.0, help="the Hub's uplink, MB/s (default 10)")
    p.add_argument("--size", choices=("small", "medium", "big"), default="medium")
    p.add_argument("--python", default=os.environ.get("BENCH_PYTHON_NEW") or _default_python("new"))
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--no-plots", action="store_true")
    a = p.parse_args(argv)
    nodes = sorted({int(x) for x in a.nodes.split(",") if x.strip()})
    from hub_prefetch.testing import LocalHub
    from hub_prefetch.testing.store import RepoStore

    work = Path(tempfile.mkdtemp(prefix="hub-prefetch-bench-fanout-"))
    hub = None
    cells: list[dict[str, Any]] = []
    try:
        store = RepoStore(work / "store")
        repo = build_repo(store, size=a.size, legacy_bin=False)
        hub = LocalHub.spawn(store.root)
        bandwidth = a.bandwidth_mb * 1e6
        hub.set_bandwidth(bandwidth, shared=True)
        print(
            f"[fanout] {repo.repo_id}: {repo.bytes_needed / 1e6:.1f} MB per load; Hub uplink "
            f"{a.bandwidth_mb:g} MB/s (one download >= {repo.bytes_needed / bandwidth:.2f} s)",
            flush=True,
        )
        for n in nodes:
            for fanout in (True, False) if n > 1 else (True,):
                cell = _cell(
                    hub,
                    repo,
                    work,
                    python=a.python,
                    nodes=n,
                    per_node=a.ranks_per_node,
                    fanout=fanout,
                    timeout=a.timeout,
                )
                cells.append(cell)
                print(
                    f"[fanout] {n} node(s) x {a.ranks_per_node}, {cell['mode']}: "
                    f"Hub bytes {cell['hub_ratio']:.2f}x, all loaded in {cell['all_ready_s']:.2f} s",
                    flush=True,
                )
    finally:
        if hub is not None:
            hub.stop()
        shutil.rmtree(work, ignore_errors=True)
    table = _table(cells)
    print(table)
    a.out.mkdir(parents=True, exist_ok=True)
    results = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": a.python,
        "bandwidth_bytes_per_s": a.bandwidth_mb * 1e6,
        "bytes_needed": repo.bytes_needed,
        "cells": cells,
    }
    (a.out / "fanout.json").write_text(json.dumps(results, indent=2) + "\n")
    note = (
        "# Peer fan-out vs every node downloads\n\n"
        f"`python -m benchmarks.fanout`: {a.ranks_per_node} rank(s) per simulated node, node-local caches, "
        f"one Hub uplink of {a.bandwidth_mb:g} MB/s shared by every response, "
        f"a {repo.bytes_needed / 1e6:.1f} MB model; nodes talk over loopback (gloo), no per-node link "
        "limit. Times from a barrier after the process group is up: until every rank has its files "
        "(``prefetch_distributed`` returned), and until the last rank has loaded the model (the machine's "
        "cores are shared by every rank's ``from_pretrained``, so this one grows with the rank count).\n\n"
        + table
        + "\n"
    )
    (a.out / "fanout.md").write_text(note)
    if not a.no_plots and (path := _plot(cells, a.out)) is not None:
        print(f"[fanout] plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
