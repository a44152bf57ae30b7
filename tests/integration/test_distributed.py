"""prefetch_distributed in real torch.distributed jobs (gloo, CPU): one download per cache domain.

Two "nodes" are simulated on one machine: each rank gets a host identity (``HUB_PREFETCH_HOST_ID``)
and its node's cache folder; a shared filesystem is one folder for every rank. Ranks are real
processes released together (:class:`~hub_prefetch.testing.WorkerPool`); the process group is
initialised through a FileStore. The worker targets live in this module (imported by the workers
through ``PYTHONPATH``); they import torch lazily, so the test process itself never needs it.

Figures (bytes served per model size, time until every rank loaded per one process alone) are
printed with ``-s`` and asserted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

SHARDED = "tiny/sharded-bert"
SUB = "text_encoder"
HERE = Path(__file__).resolve().parent
TARGET = f"{Path(__file__).stem}:rank_main"
SINGLE = f"{Path(__file__).stem}:single_main"
# Imported before READY, so that GO starts the calls rather than the imports.
PRELOAD = ("torch.distributed", "transformers", "hub_prefetch.testing.repos", "hub_prefetch.distributed")


# ----------------------------------------------------------------------------- worker targets


def _load(repo_id: str, subfolder: str, commit: str, cache_dir: str) -> str:
    import transformers  # noqa: PLC0415 - workers only

    from hub_prefetch.testing.repos import tensor_fingerprint  # noqa: PLC0415

    transformers.logging.set_verbosity_error()
    model = transformers.AutoModel.from_pretrained(
        repo_id, subfolder=subfolder, revision=commit, cache_dir=cache_dir, local_files_only=True
    )
    return str(tensor_fingerprint(model))


def rank_main(
    *,
    rank: int,
    world: int,
    init_file: str,
    host_id: str,
    cache_dir: str,
    repo_id: str = SHARDED,
    subfolder: str = SUB,
    group_timeout: float | None = None,
    scope: str = "auto",
    control_timeout: bool = False,
) -> dict[str, Any]:
    """One rank: join the group, prefetch_distributed, load with local_files_only, report."""
    os.environ["HUB_PREFETCH_HOST_ID"] = host_id
    from datetime import timedelta  # noqa: PLC0415

    import torch.distributed as dist  # noqa: PLC0415

    from hub_prefetch.distributed import prefetch_distributed  # noqa: PLC0415

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    group = dist.new_group(timeout=timedelta(seconds=group_timeout)) if group_timeout else None
    # Line the ranks up before the clock starts (no download has begun yet).
    dist.barrier(group=group)
    t0 = time.time()
    result = prefetch_distributed(repo_id, [subfolder], cache_dir=cache_dir, group=group, cache_scope=scope)  # type: ignore[arg-type]
    t1 = time.time()
    fingerprint = _load(repo_id, subfolder, result.commit, cache_dir)
    t2 = time.time()
    control = None
    if control_timeout:
        # Proof that the group's short timeout is real: a collective that one rank joins late fails.
        if rank == 0:
            time.sleep(float(group_timeout or 0) + 1.5)
        try:
            dist.barrier(group=group)
            control = "ok"
        except Exception as exc:  # noqa: BLE001 - reported to the test
            control = f"{type(exc).__name__}: {exc}"[:200]
    return {
        "rank": rank,
        "commit": result.commit,
        "revision": result.revision,
        "fingerprint": fingerprint,
        "downloaded": list(result.downloaded),
        "bytes_total": result.bytes_total,
        "warm": result.warm,
        "waited_s": result.waited_s,
        "t0": t0,
        "t1": t1,
        "t2": t2,
        "t3": time.time(),
        "control": control,
    }


def single_main(*, cache_dir: str, repo_id: str = SHARDED, subfolder: str = SUB) -> dict[str, Any]:
    """The baseline: one process alone prefetches and loads."""
    import hub_prefetch  # noqa: PLC0415

    t0 = time.time()
    result = hub_prefetch.prefetch(repo_id, [subfolder], cache_dir=cache_dir)
    fingerprint = _load(repo_id, subfolder, result.commit, cache_dir)
    return {"t0": t0, "t2": time.time(), "fingerprint": fingerprint, "bytes_total": result.bytes_total}


# ----------------------------------------------------------------------------- helpers


def _env(hf_env: dict[str, Any], **extra: str) -> dict[str, Any]:
    env = dict(hf_env)
    old = os.environ.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *([old] if old else [])])
    env["HUB_PREFETCH_LEASE_TTL"] = "2"
    env["HUB_PREFETCH_BACKOFF"] = "0.1"
    env.update(extra)
    return env


def _ranks(tmp_path: Path, layout: Sequence[tuple[str, Path]], **kw: Any) -> list[dict[str, Any]]:
    init = tmp_path / "store"
    return [
        {
            "rank": r,
            "world": len(layout),
            "init_file": str(init),
            "host_id": host,
            "cache_dir": str(cache),
            **kw,
        }
        for r, (host, cache) in enumerate(layout)
    ]


def _pool(env: dict[str, Any], kwargs: list[dict[str, Any]], timeout: float = 150) -> Any:
    from hub_prefetch.testing import WorkerPool  # noqa: PLC0415

    return WorkerPool(TARGET, kwargs, n=len(kwargs), env=env, timeout=timeout, preload=PRELOAD)


def _run(env: dict[str, Any], kwargs: list[dict[str, Any]], timeout: float = 150) -> list[Any]:
    with _pool(env, kwargs, timeout) as pool:
        t_start = time.monotonic()
        pool.wait_ready()
        t_ready = time.monotonic()
        pool.go()
        results = list(pool.results())
        t_go = pool.t_go or 0.0
        print(
            f"\n[pool] {len(kwargs)} workers ready in {t_ready - t_start:.1f} s, ran {time.monotonic() - t_ready:.1f} s;"
            f" calls {[round(r.t_start - t_go, 1) for r in results]} -> {[round(r.t_end - t_go, 1) for r in results]}"
            f" t0..t3 {[[round(r.value[k] - t_go, 1) for k in ('t0', 't1', 't2', 't3')] for r in results if r.ok]}"
        )
        return results


def _ok(results: Sequence[Any]) -> list[dict[str, Any]]:
    assert all(r.ok for r in results), [(r.index, r.error_type, r.error, r.stderr[-1500:]) for r in results]
    return [r.value for r in results]


def _baseline(env: dict[str, Any], tmp_path: Path) -> float:
    from hub_prefetch.testing import run_workers  # noqa: PLC0415

    (result,) = run_workers(
        SINGLE, {"cache_dir": str(tmp_path / "alone")}, n=1, env=env, timeout=120, preload=PRELOAD
    )
    assert result.ok, result.error
    return float(result.value["t2"] - result.value["t0"])


def _metadata(hub: Any) -> int:
    counts = hub.counts()
    return int(counts["revision"] + counts["tree"] + counts["other"])


def _model_files(values: Sequence[dict[str, Any]], hub: Any) -> list[str]:
    return [f for f in hub.store.files(SHARDED, values[0]["commit"]) if f.startswith(f"{SUB}/")]


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("shared", [False, True], ids=["node-local caches", "shared cache"])
def test_two_nodes_of_four_ranks_download_once_per_cache_domain(
    local_hub: Any, built_repos: Any, hf_env: dict[str, Any], tmp_path: Path, shared: bool
) -> None:
    env = _env(hf_env)
    rate = 2_000_000.0
    local_hub.set_bandwidth(rate)
    alone = _baseline(env, tmp_path)
    local_hub.reset_log()

    caches = {h: tmp_path / ("shared" if shared else h) / "hub" for h in ("node-a", "node-b")}
    layout = [(h, caches[h]) for h in ("node-a", "node-b") for _ in range(4)]
    values = _ok(_run(env, _ranks(tmp_path, layout)))

    commit = built_repos["sharded"].commit
    assert {v["commit"] for v in values} == {commit}
    assert {v["fingerprint"] for v in values} == {built_repos["sharded"].fingerprint}
    domains = 1 if shared else 2
    downloaders = [v["rank"] for v in values if v["downloaded"]]
    assert downloaders == ([0] if shared else [0, 4])
    for f in _model_files(values, local_hub):
        assert local_hub.times_served(f) == domains, f
    model_bytes = values[0]["bytes_total"]
    served = local_hub.bytes_served()
    assert served == domains * model_bytes
    assert _metadata(local_hub) <= domains  # rank 0 resolves once; every other domain once
    elapsed = max(v["t2"] for v in values) - min(v["t0"] for v in values)
    print(
        f"\n[2 nodes x 4 ranks, {'shared' if shared else 'node-local'} cache] bytes served / model = "
        f"{served / model_bytes:.2f}; time all loaded = {elapsed:.2f} s = {elapsed / alone:.2f} x one process "
        f"alone ({alone:.2f} s); metadata requests {_metadata(local_hub)}, HEAD {local_hub.counts()['head']}"
    )
    # Waiting ranks load at about the leader's pace: a per-rank download would take 4-8 x as long.
    assert elapsed < 3.0 * alone + 5.0


def test_slow_leader_does_not_trip_a_short_collective_timeout(
    local_hub: Any, built_repos: Any, hf_env: dict[str, Any], tmp_path: Path
) -> None:
    env = _env(hf_env)
    group_timeout = 2.0
    cache = tmp_path / "hub"
    model_bytes = sum(
        s.size
        for p, s in local_hub.store.files(SHARDED, built_repos["sharded"].commit).items()
        if p.startswith(SUB)
    )
    # Throttled so the download lasts about three collective timeouts.
    local_hub.set_bandwidth(model_bytes / (3 * group_timeout))
    layout = [("node-a", cache)] * 4
    values = _ok(_run(env, _ranks(tmp_path, layout, group_timeout=group_timeout, control_timeout=True)))
    assert {v["commit"] for v in values} == {built_repos["sharded"].commit}
    leader = values[0]
    download_s = leader["t1"] - leader["t0"]
    assert download_s > 2 * group_timeout, download_s
    followers = values[1:]
    assert all(not v["downloaded"] and v["waited_s"] > group_timeout for v in followers)
    # The control: the same group really times out a collective that waits longer than its timeout.
    assert all(v["control"] != "ok" for v in followers), [v["control"] for v in followers]
    print(
        f"\n[slow leader] download {download_s:.1f} s vs group timeout {group_timeout:g} s; followers waited "
        f"{min(v['waited_s'] for v in followers):.1f}-{max(v['waited_s'] for v in followers):.1f} s, none timed out"
    )
