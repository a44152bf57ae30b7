"""The overview's several-nodes scenario: one torch.distributed job over simulated nodes, each with its own
cache folder and host identity (``HUB_PREFETCH_HOST_ID``), one rank per node, gloo on 127.0.0.1 through a
file-based init.

Plain: every rank calls ``from_pretrained`` against its node's cache (one Hub download per node).
hub-prefetch: every rank joins the group, calls :func:`hub_prefetch.prefetch_distributed` (one Hub
download for the job, passed on among the nodes' leaders over gloo), then loads with
``local_files_only=True``. The ranks are real processes forked from one interpreter that imported torch
and transformers once (:class:`~hub_prefetch.testing.forkpool.ForkedWorkers`), as the other rows' are;
the bytes and requests come from the local Hub's request log.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..console import StatusLine
from .runs import _CACHE_PATH, REPO_ID, SUBFOLDER, RunStats, _worker_env, count_temp_files

if TYPE_CHECKING:
    from ..testing import LocalHub

__all__ = ["NODES", "rank", "run_nodes"]

#: Simulated nodes (one rank each) of the several-nodes scenario.
NODES = 4

_PRELOAD = ("torch.distributed", "transformers.models.bert.modeling_bert", "hub_prefetch.distributed")


def rank(
    *,
    mode: str,
    rank: int,
    world: int,
    init_file: str,
    host_id: str,
    cache_dir: str,
    repo_id: str,
    subfolder: str,
) -> dict[str, Any]:
    """One rank of the job (a forked worker): plain ``from_pretrained`` on its node's cache, or join the
    group, ``prefetch_distributed``, then load offline pinned to the commit it returned."""
    os.environ["HUB_PREFETCH_HOST_ID"] = host_id  # read at call time by hub-prefetch's settings
    from ..testing import targets  # noqa: PLC0415 - in the worker, after its environment is set

    if mode == "plain":
        value = targets.plain_from_pretrained(repo_id, subfolder=subfolder, cache_dir=cache_dir)
        return {"fingerprint": value["fingerprint"]}
    from datetime import timedelta  # noqa: PLC0415

    import torch.distributed as dist  # noqa: PLC0415 - preloaded by the zygote

    from hub_prefetch.distributed import prefetch_distributed  # noqa: PLC0415

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    try:
        result = prefetch_distributed(repo_id, [subfolder], cache_dir=cache_dir)
        value = targets.plain_from_pretrained(
            repo_id, subfolder=subfolder, revision=result.commit, cache_dir=cache_dir, local_files_only=True
        )
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return {"fingerprint": value["fingerprint"], "commit": result.commit}


def _kwargs(folder: Path, mode: str, nodes: int) -> list[dict[str, Any]]:
    folder.mkdir(parents=True, exist_ok=True)
    return [
        {
            "mode": mode,
            "rank": r,
            "world": nodes,
            "init_file": str(folder / "init"),
            "host_id": f"node-{r}",
            "cache_dir": str(folder / f"node-{r}" / "hub"),
            "repo_id": REPO_ID,
            "subfolder": SUBFOLDER,
        }
        for r in range(nodes)
    ]


def _tally(stats: RunStats, results: list[Any], t_go: float, records: list[Any], fingerprint: str) -> None:
    stats.rounds += 1
    errors: Counter[str] = Counter(stats.errors)
    for r in results:
        if not r.ok:
            stats.failed += 1
            first_line = (r.error or "").strip().splitlines()[0] if r.error else ""
            errors[f"{r.error_type}: {_CACHE_PATH.sub('.../models--', first_line)[:160]}"] += 1
        elif (r.value or {}).get("fingerprint") != fingerprint:
            stats.wrong_weights += 1
            errors["loaded weights that differ from the repo's"] += 1
        else:
            stats.ok += 1
    last = max((r.t_end - t_go for r in results), default=0.0)
    stats.last_done_s = max(stats.last_done_s, last)
    stats.round_times_s.append(last if stats.ok == stats.workers * stats.rounds else None)
    stats.bytes_served += sum(q.bytes_sent for q in records if q.kind == "get")
    stats.hub_requests += len(records)
    by_kind = Counter(stats.requests_by_kind)
    by_kind.update(q.kind for q in records)
    stats.requests_by_kind = dict(by_kind)
    stats.errors = dict(errors)


def run_nodes(
    hub: LocalHub,
    root: Path,
    *,
    nodes: int = NODES,
    fingerprint: str,
    needed: int,
    status: StatusLine,
    label: str,
) -> tuple[RunStats, RunStats]:
    """Run the job once plain, once with ``prefetch_distributed``, each on fresh node caches; return the
    two columns (plain, hub-prefetch)."""

    from ..testing.forkpool import ForkedWorkers  # noqa: PLC0415 - optional testing extras

    home = root / "nodes"
    columns: list[RunStats] = []
    status.waiting(f"{label}: starting {nodes} simulated nodes (one rank each)")
    with ForkedWorkers(
        "hub_prefetch.demo.nodes:rank",
        _kwargs(home / "plain", "plain", nodes),
        n=nodes,
        env=_worker_env(hub, home, {}),
        timeout=150,
        preload=_PRELOAD,
    ) as pool:
        for mode, side in (("plain", "plain"), ("fanout", "hub-prefetch")):
            stats = RunStats(name=f"several-nodes: {side}", workers=nodes)
            folder = home / mode
            if mode != "plain":
                pool.next_round(_kwargs(folder, mode, nodes))
            status.waiting(f"{label}: {nodes} {side} ranks loading, one cache per node")
            hub.reset_log()
            t_go = pool.go()
            results = pool.results()
            time.sleep(0.3)  # the log entry of the last body is written when its response ends
            _tally(stats, results, t_go, hub.requests(), fingerprint)
            stats.temp_files = sum(count_temp_files(folder / f"node-{r}" / "hub") for r in range(nodes))
            stats.bytes_needed = needed
            columns.append(stats)
    return columns[0], columns[1]
