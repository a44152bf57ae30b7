"""The rank harness of the torch.distributed tests (``test_distributed.py``, ``test_fanout.py``).

Both run real jobs on one machine: every rank is a worker process of a
:class:`~hub_prefetch.testing.WorkerPool` with a host identity and its node's cache folder, the process
group is gloo through a FileStore, and each rank runs phases (``prefetch_distributed``, then a load with
``local_files_only``) back to back. Each test file keeps its own worker target (``rank_main``: what a
phase calls, its own knobs); this module holds what they share, on both sides:

in a rank     :func:`join` the group, :func:`timed_phase` (barrier, prefetch, load, times), :func:`load`
in the test   :func:`worker_env`, :func:`rank_kwargs`, :func:`pool`, then :func:`ok`, :func:`phase`,
              :func:`window`, :func:`all_loaded`, :func:`model_bytes`, :func:`get_bytes`

Workers import it as ``tests.support.dist_ranks`` (the repo root is on every worker's ``PYTHONPATH``,
see ``tests/conftest.py``); torch and transformers are imported lazily, so the test process itself never
needs them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "PRELOAD",
    "SHARDED",
    "SUB",
    "all_loaded",
    "get_bytes",
    "join",
    "load",
    "model_bytes",
    "ok",
    "phase",
    "pool",
    "rank_kwargs",
    "timed_phase",
    "window",
    "worker_env",
]

SHARDED = "tiny/sharded-bert"
SUB = "text_encoder"
#: Imported before READY, so that GO starts the calls rather than the imports.
PRELOAD = (
    "torch.distributed",
    "transformers",
    "transformers.models.bert.modeling_bert",
    "hub_prefetch.testing.repos",
    "hub_prefetch.distributed",
)
#: The test modules' folder: their ``rank_main`` targets (and ``_netns``) are imported from it by name.
INTEGRATION = Path(__file__).resolve().parent.parent / "integration"


# ----------------------------------------------------------------------------- in a rank


def load(repo_id: str, subfolder: str, commit: str, cache_dir: str) -> str:
    """``from_pretrained`` with ``local_files_only``; the loaded tensors' fingerprint."""
    import transformers

    from hub_prefetch.testing.repos import tensor_fingerprint

    transformers.logging.set_verbosity_error()
    model = transformers.AutoModel.from_pretrained(
        repo_id, subfolder=subfolder, revision=commit, cache_dir=cache_dir, local_files_only=True
    )
    return str(tensor_fingerprint(model))


def join(rank: int, world: int, init_file: str) -> Any:
    """Join the default group (gloo, a FileStore at ``init_file``); returns ``torch.distributed``."""
    from datetime import timedelta

    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    return dist


def timed_phase(
    prefetch: Callable[[], Any],
    *,
    repo_id: str,
    subfolder: str,
    cache_dir: str,
    barrier_group: Any = None,
) -> dict[str, Any]:
    """One phase of a rank: line the ranks up (a barrier on ``barrier_group``, default: the default
    group) before the clock starts, then ``prefetch()`` and, if it returned, load what it gave.

    The record: ``t0`` (after the barrier), ``t1`` (the call returned or raised), ``ok``; an error's
    ``error_type`` and ``error``, or the result's facts, the loaded ``fingerprint`` and ``t2``.
    """
    import torch.distributed as dist

    dist.barrier(group=barrier_group)
    rec: dict[str, Any] = {"t0": time.time(), "ok": False}
    try:
        result = prefetch()
    except Exception as exc:
        rec.update(t1=time.time(), error_type=type(exc).__name__, error=str(exc))
        return rec
    rec.update(
        ok=True,
        t1=time.time(),
        commit=result.commit,
        revision=result.revision,
        downloaded=list(result.downloaded),
        bytes_total=result.bytes_total,
        warm=result.warm,
        waited_s=result.waited_s,
    )
    rec["fingerprint"] = load(repo_id, subfolder, result.commit, cache_dir)
    rec["t2"] = time.time()
    return rec


# ----------------------------------------------------------------------------- in the test


def worker_env(hf_env: Mapping[str, Any], *, lease_ttl: float, **extra: str) -> dict[str, Any]:
    """The ranks' environment: the test modules' folder first on ``PYTHONPATH``, the lease TTL, a short
    back-off, then ``extra``."""
    env = dict(hf_env)
    old = os.environ.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join([str(INTEGRATION), *([old] if old else [])])
    env["HUB_PREFETCH_LEASE_TTL"] = f"{lease_ttl:g}"
    env["HUB_PREFETCH_BACKOFF"] = "0.1"
    env.update(extra)
    return env


def rank_kwargs(
    tmp_path: Path,
    hosts: Sequence[str],
    phases: Sequence[Mapping[str, Any] | Sequence[Mapping[str, Any]]],
    *,
    per_rank: Sequence[Mapping[str, Any]] | None = None,
    **kw: Any,
) -> list[dict[str, Any]]:
    """Each rank's keyword arguments for ``rank_main``: one rank per host entry. A phase given as a
    mapping is every rank's; given as a sequence it holds one mapping per rank (per-node caches).
    ``per_rank``: more arguments, one mapping per rank; ``kw``: more arguments for every rank."""
    init = tmp_path / "store"
    return [
        {
            "rank": r,
            "world": len(hosts),
            "init_file": str(init),
            "host_id": host,
            "phases": [dict(p) if isinstance(p, Mapping) else dict(p[r]) for p in phases],
            **(per_rank[r] if per_rank is not None else {}),
            **kw,
        }
        for r, host in enumerate(hosts)
    ]


def pool(
    target: str, env: Mapping[str, Any], kwargs: Sequence[Mapping[str, Any]], timeout: float = 150
) -> Any:
    """A :class:`~hub_prefetch.testing.WorkerPool` of one worker per rank, the job's modules preloaded."""
    from hub_prefetch.testing import WorkerPool

    return WorkerPool(target, kwargs, n=len(kwargs), env=env, timeout=timeout, preload=PRELOAD)


def ok(results: Sequence[Any]) -> list[dict[str, Any]]:
    """The workers' return values, once every one of them returned (else their errors and stderr)."""
    assert all(r.ok for r in results), [(r.index, r.error_type, r.error, r.stderr[-2500:]) for r in results]
    return [r.value for r in results]


def phase(values: Sequence[Mapping[str, Any]], i: int) -> list[dict[str, Any]]:
    """Phase ``i``'s record of every rank, with its ``rank``."""
    return [{"rank": v["rank"], **v["phases"][i]} for v in values]


def window(hub: Any, recs: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The Hub requests made during one phase (phases are separated by a barrier)."""
    lo = min(r["t0"] for r in recs)
    hi = max(r.get("t2", r["t1"]) for r in recs)
    return [q for q in hub.requests() if lo <= q.t_start <= hi]


def all_loaded(recs: Sequence[Mapping[str, Any]], built: Any) -> None:
    """Every rank's call returned, and every rank loaded ``built``'s commit and tensors."""
    assert all(r["ok"] for r in recs), [
        (r["rank"], r.get("error_type"), r.get("error")) for r in recs if not r["ok"]
    ]
    assert {r["commit"] for r in recs} == {built.commit}
    assert {r["fingerprint"] for r in recs} == {built.fingerprint}


def get_bytes(requests: Sequence[Any]) -> int:
    """Body bytes the Hub sent for file GETs."""
    return sum(q.bytes_sent for q in requests if q.kind == "get")


def model_bytes(hub: Any, commit: str, repo_id: str = SHARDED, sub: str = SUB) -> int:
    """The size of the model's files (those under ``sub``) at ``commit``."""
    return sum(s.size for p, s in hub.store.files(repo_id, commit).items() if p.startswith(f"{sub}/"))
