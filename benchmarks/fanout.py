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

``--link-mbit R`` gives every node a real link instead: a network namespace per node, joined to a bridge
by a veth pair that ``tc`` limits to R Mbit/s each way (:mod:`hub_prefetch.testing.netns`; the ranks of
a node share its namespace, gloo talks over its ``eth0``). The Hub, in its own process, is bound to the
bridge, and its uplink defaults to R too, so "one node" is one download through one link of R. Needs
root, ``ip`` and ``tc`` (else it says why and skips). Written: ``results/fanout-links.*``.

Every cell also splits its time with the Hub's request log: until the first GET, from the first GET's
start to the last GET's end (the Hub transfer), and from there until every rank had its files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
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
    netns: str | None = None,
) -> dict[str, Any]:
    """One rank of the job: join the group, line up, prefetch_distributed, load; report the times.
    ``netns``: first move into that node's network namespace (gloo then talks over its ``eth0``)."""
    t_start = time.time()
    os.environ["HUB_PREFETCH_HOST_ID"] = host_id
    if netns is not None:
        from hub_prefetch.testing.netns import enter

        enter(netns)
        os.environ["GLOO_SOCKET_IFNAME"] = "eth0"
    from datetime import timedelta

    import torch.distributed as dist
    import transformers

    from hub_prefetch.distributed import prefetch_distributed

    transformers.logging.set_verbosity_error()
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=300)
    )
    t_group = time.time()
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
        "host": host_id,
        "t_start": t_start,
        "t_group": t_group,
        "t0": t0,
        "t1": t1,
        "t2": t2,
        "commit": result.commit,
        "downloaded": len(result.downloaded),
    }


def _cell(
    hub: Any,
    repo: Any,
    work: Path,
    *,
    python: str,
    nodes: int,
    per_node: int,
    fanout: bool,
    timeout: float,
    netns: Sequence[str] | None = None,
) -> dict[str, Any]:
    """One run of ``nodes`` x ``per_node`` ranks; ``netns``: node ``i``'s namespace (None: loopback)."""
    from hub_prefetch.testing import WorkerPool

    tag = f"{nodes}x{per_node}-{'fanout' if fanout else 'each'}"
    folder = work / tag
    node_of = [n for n in range(nodes) for _ in range(per_node)]
    hosts = [f"node-{n}" for n in node_of]
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
            **({"netns": netns[node_of[r]]} if netns is not None else {}),
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
    ready = max(v["t1"] for v in values)
    time.sleep(0.5)  # the log entry of the last body is written when the response ends
    requests = hub.requests()
    gets = [q for q in requests if q.kind == "get"]
    served = sum(q.bytes_sent for q in gets)
    assert len({v["commit"] for v in values}) == 1
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "nodes": nodes,
        "ranks_per_node": per_node,
        "mode": "fanout" if fanout else "each",
        "link_mbit": None,  # set by the caller
        "hub_bytes": served,
        "hub_ratio": served / repo.bytes_needed,
        "all_ready_s": hi - lo,
        "prefetched_s": ready - lo,
        "ranks": [
            {
                "rank": v["rank"],
                "host": v["host"],
                "downloaded": v["downloaded"],
                "start_to_group_s": v["t_group"] - v["t_start"],
                "prefetch_s": v["t1"] - v["t0"],
                "load_s": v["t2"] - v["t1"],
            }
            for v in sorted(values, key=lambda v: v["rank"])
        ],
        "breakdown": _breakdown(requests, lo, ready, hi),
    }


def _breakdown(requests: Sequence[Any], lo: float, ready: float, loaded: float) -> dict[str, Any]:
    """Where a cell's time went, from the Hub's request log (``time.time()`` values, one clock): from the
    barrier (``lo``) to the first request and to the first GET, the Hub transfer (first GET start to
    last GET end), from the last GET's end until every rank had its files (``ready``), then the load."""
    gets = [q for q in requests if q.kind == "get"]
    if not requests or not gets:
        return {"requests": len(requests), "gets": len(gets)}
    first_get = min(q.t_start for q in gets)
    last_get = max(q.t_end or q.t_start for q in gets)
    return {
        "requests": len(requests),
        "gets": len(gets),
        "to_first_request_s": min(q.t_start for q in requests) - lo,
        "to_first_get_s": first_get - lo,
        "hub_transfer_s": last_get - first_get,
        "after_last_get_s": ready - last_get,
        "load_s": loaded - ready,
        # Each GET, from the barrier: with files fetched side by side, all of them end near the end.
        "get_log": [
            {
                "file": q.filename,
                "bytes": q.bytes_sent,
                "start_s": q.t_start - lo,
                "end_s": (q.t_end or q.t_start) - lo,
            }
            for q in sorted(gets, key=lambda q: q.t_start)
        ],
    }


def _table(cells: list[dict[str, Any]]) -> str:
    """Per cell: Hub bytes / model; files ready on every rank and everything loaded, in seconds and as a
    ratio to the one-node run; the fan-out's time as a ratio to every node downloading."""
    one = min(cells, key=lambda c: c["nodes"])
    rows = [
        (
            "| nodes | ranks/node | mode | Hub bytes / model | files ready (s) | / one node | all loaded (s) "
            "| / one node | fan-out / each (files, loaded) | files ready, every run (s) |"
        ),
        "|---:|---:|---|---:|---:|---:|---:|---:|---|---|",
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
            f"{c['all_ready_s']:.2f} | {c['all_ready_s'] / one['all_ready_s']:.2f} | {ratio} | "
            + ", ".join(f"{t:.2f}" for t in c.get("runs_prefetched_s", [c["prefetched_s"]]))
            + " |"
        )
    return "\n".join(rows)


def _breakdown_table(cells: list[dict[str, Any]]) -> str:
    """Per cell, in seconds from the barrier: first Hub request, first GET; the Hub transfer (first GET
    start to last GET end); from then until every rank had its files; the load; and the range of the
    ranks' own ``prefetch_distributed`` times."""
    rows = [
        (
            "| nodes | ranks/node | mode | to first request | to first GET | Hub transfer | last GET to "
            "files ready | files ready | load | prefetch per rank (min-max) |"
        ),
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in cells:
        b = c["breakdown"]
        if "hub_transfer_s" not in b:
            continue
        per_rank = [r["prefetch_s"] for r in c["ranks"]]
        rows.append(
            f"| {c['nodes']} | {c['ranks_per_node']} | {c['mode']} | {b['to_first_request_s']:.2f} | "
            f"{b['to_first_get_s']:.2f} | {b['hub_transfer_s']:.2f} | {b['after_last_get_s']:.2f} | "
            f"{c['prefetched_s']:.2f} | {b['load_s']:.2f} | {min(per_rank):.2f}-{max(per_rank):.2f} |"
        )
    return "\n".join(rows)


def _one_node_split(cells: list[dict[str, Any]]) -> str:
    """The one-domain (fewest nodes, fan-out) time: the Hub transfer against the rest."""
    one = min((c for c in cells if c["mode"] == "fanout"), key=lambda c: c["nodes"], default=None)
    if one is None or "hub_transfer_s" not in one["breakdown"]:
        return ""
    b, total = one["breakdown"], one["prefetched_s"]
    rest = total - b["hub_transfer_s"]
    return (
        f"One domain ({one['nodes']} node(s) x {one['ranks_per_node']}): files ready in {total:.2f} s = "
        f"Hub transfer {b['hub_transfer_s']:.2f} s ({b['hub_transfer_s'] / total:.0%}) + the rest "
        f"{rest:.2f} s ({b['to_first_get_s']:.2f} s before the first GET, {b['after_last_get_s']:.2f} s "
        f"after the last); then {b['load_s']:.2f} s to load."
    )


def _plot(cells: list[dict[str, Any]], out: Path, *, name: str = "fanout", where: str = "") -> Path | None:
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
    right.set(
        xlabel="nodes (node-local caches)", ylabel="seconds", title=f"Time until every rank is ready{where}"
    )
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fanout", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", default="1,2,4,8", help="comma-separated node counts (default 1,2,4,8)")
    p.add_argument("--ranks-per-node", type=int, default=1)
    p.add_argument(
        "--bandwidth-mb",
        type=float,
        default=None,
        help="the Hub's uplink, MB/s (default 10; with --link-mbit, the link rate)",
    )
    p.add_argument(
        "--link-mbit",
        type=float,
        default=None,
        help="give every node its own link of this many Mbit/s each way (network namespaces, tc; "
        "needs root). Default: nodes talk over loopback",
    )
    p.add_argument("--size", choices=("small", "medium", "big"), default="medium")
    p.add_argument("--repeat", type=int, default=1, help="runs per cell; the median files-ready run is shown")
    p.add_argument("--python", default=os.environ.get("BENCH_PYTHON_NEW") or _default_python("new"))
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--no-plots", action="store_true")
    a = p.parse_args(argv)
    nodes = sorted({int(x) for x in a.nodes.split(",") if x.strip()})
    from hub_prefetch.testing import LocalHub
    from hub_prefetch.testing.store import RepoStore

    link = a.link_mbit
    if link is not None:
        from hub_prefetch.testing.netns import links, refused

        if (why := refused()) is not None:
            print(f"[fanout] skipped: no per-node links here ({why})", flush=True)
            return 0
    bandwidth_mb = a.bandwidth_mb if a.bandwidth_mb is not None else (link / 8 if link else 10.0)
    bandwidth = bandwidth_mb * 1e6
    where = (
        "nodes on loopback (no per-node link)"
        if link is None
        else f"per-node links of {link:g} Mbit/s ({link / 8:g} MB/s) each way"
    )
    name = "fanout" if link is None else "fanout-links"
    if link is not None and a.bandwidth_mb is not None and abs(bandwidth_mb - link / 8) > 1e-9:
        name += f"-hub{round(100 * bandwidth_mb / (link / 8))}"  # the Hub's share of a link, in %

    work = Path(tempfile.mkdtemp(prefix="hub-prefetch-bench-fanout-"))
    hub = None
    cells: list[dict[str, Any]] = []
    try:
        store = RepoStore(work / "store")
        repo = build_repo(store, size=a.size, legacy_bin=False)
        if link is None:
            hub = LocalHub.spawn(store.root)
            hub.set_bandwidth(bandwidth, shared=True)
        print(
            f"[fanout] {repo.repo_id}: {repo.bytes_needed / 1e6:.1f} MB per load; {where}; Hub uplink "
            f"{bandwidth_mb:g} MB/s (one download >= {repo.bytes_needed / bandwidth:.2f} s)",
            flush=True,
        )
        for n in nodes:
            for fanout in (True, False) if n > 1 else (True,):
                run = {
                    "python": a.python,
                    "nodes": n,
                    "per_node": a.ranks_per_node,
                    "fanout": fanout,
                    "timeout": a.timeout,
                }
                runs = []
                for _ in range(a.repeat):
                    if link is None:
                        runs.append(_cell(hub, repo, work, **run))
                        continue
                    # A bridge and n namespaces per cell; the Hub (its own process) bound to the bridge.
                    with links(n, rate_mbit=link) as net:
                        cell_hub = LocalHub.spawn(store.root, host=net.hub_ip)
                        try:
                            cell_hub.set_bandwidth(bandwidth, shared=True)
                            runs.append(_cell(cell_hub, repo, work, netns=net.namespaces, **run))
                        finally:
                            cell_hub.stop()
                # The run with the median files-ready time stands for the cell; every run's time is kept.
                cell = sorted(runs, key=lambda c: c["prefetched_s"])[len(runs) // 2]
                cell["runs_prefetched_s"] = [c["prefetched_s"] for c in runs]
                cell["link_mbit"] = link
                cells.append(cell)
                b = cell["breakdown"]
                print(
                    f"[fanout] {n} node(s) x {a.ranks_per_node}, {cell['mode']}: "
                    f"Hub bytes {cell['hub_ratio']:.2f}x, files ready in {cell['prefetched_s']:.2f} s "
                    f"(runs {', '.join(f'{t:.2f}' for t in cell['runs_prefetched_s'])}) "
                    f"(Hub transfer {b.get('hub_transfer_s', 0.0):.2f} s), "
                    f"all loaded in {cell['all_ready_s']:.2f} s",
                    flush=True,
                )
    finally:
        if hub is not None:
            hub.stop()
        shutil.rmtree(work, ignore_errors=True)
    table = _table(cells)
    breakdown = _breakdown_table(cells)
    split = _one_node_split(cells)
    print(f"[fanout] {where}")
    print(table)
    print()
    print(breakdown)
    print(split)
    a.out.mkdir(parents=True, exist_ok=True)
    results = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": a.python,
        "link_mbit": link,
        "bandwidth_bytes_per_s": bandwidth,
        "bytes_needed": repo.bytes_needed,
        "cells": cells,
    }
    (a.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    if link is None:
        setting = "nodes talk over loopback (gloo), no per-node link limit"
    else:
        setting = (
            f"every node in its own network namespace behind a veth pair that tc limits to {link:g} Mbit/s "
            f"({link / 8:g} MB/s) each way, the ranks of a node sharing it (gloo over its eth0), the Hub "
            "bound to the bridge"
        )
    note = (
        f"# Peer fan-out vs every node downloads ({where})\n\n"
        f"`python -m benchmarks.fanout{'' if link is None else f' --link-mbit {link:g}'}`: "
        f"{a.ranks_per_node} rank(s) per simulated node, node-local caches, "
        f"one Hub uplink of {bandwidth_mb:g} MB/s shared by every response, "
        f"a {repo.bytes_needed / 1e6:.1f} MB model; {setting}. Times from a barrier after the process "
        "group is up: until every rank has its files "
        "(``prefetch_distributed`` returned), and until the last rank has loaded the model (the machine's "
        "cores are shared by every rank's ``from_pretrained``, so this one grows with the rank count).\n\n"
        + table
        + "\n\nWhere the time goes (seconds from the barrier; the Hub transfer is its first GET's start to "
        "its last GET's end):\n\n" + breakdown + "\n\n" + split + "\n"
    )
    (a.out / f"{name}.md").write_text(note)
    if not a.no_plots and (path := _plot(cells, a.out, name=name, where=f"\n({where})")) is not None:
        print(f"[fanout] plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
