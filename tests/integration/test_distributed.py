"""prefetch_distributed in real torch.distributed jobs (gloo, CPU): one download per cache domain.

Two "nodes" are simulated on one machine: each rank gets a host identity (``HUB_PREFETCH_HOST_ID``)
and its node's cache folder; a shared filesystem is one folder for every rank. Ranks are real
processes released together (:class:`~hub_prefetch.testing.WorkerPool`); the process group is
initialised through a FileStore. The worker target lives in this module (imported by the workers
through ``PYTHONPATH``), the harness it shares with ``test_fanout.py`` in :mod:`tests.support.dist_ranks`;
both import torch lazily, so the test process itself never needs it.

Figures (bytes served per model size, time until every rank loaded per one process alone) are
printed with ``-s`` and asserted.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import hub_prefetch
from tests.support import dist_ranks
from tests.support.dist_ranks import SHARDED, SUB

pytestmark = pytest.mark.slow

TARGET = f"{Path(__file__).stem}:rank_main"


# ----------------------------------------------------------------------------- worker target


def rank_main(
    *,
    rank: int,
    world: int,
    init_file: str,
    host_id: str,
    phases: list[dict[str, Any]],
    baseline_cache: str | None = None,
    group_timeout: float | None = None,
    control_timeout: bool = False,
) -> dict[str, Any]:
    """One rank: join the group, then per phase: prefetch_distributed, load with local_files_only.

    Phases run back to back in the same processes (one process start for several scenarios); the
    default group's barrier separates them. A phase may name its ``repo_id``/``subfolder``, a
    ``bad_subfolder`` to ask for instead, ``scope`` and ``fanout``. ``group_timeout``: the calls are
    given a subgroup of every rank with that timeout. ``baseline_cache``: rank 0 first prefetches and
    loads alone while the others wait (the "one process alone" figure).
    """
    os.environ["HUB_PREFETCH_HOST_ID"] = host_id
    dist = dist_ranks.join(rank, world, init_file)
    from datetime import timedelta

    from hub_prefetch.distributed import prefetch_distributed

    group = dist.new_group(timeout=timedelta(seconds=group_timeout)) if group_timeout else None
    out: dict[str, Any] = {"rank": rank, "phases": []}
    if baseline_cache is not None:
        dist.barrier()
        if rank == 0:
            t0 = time.time()
            res = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=baseline_cache)
            dist_ranks.load(SHARDED, SUB, res.commit, baseline_cache)
            out["baseline"] = {"t0": t0, "t2": time.time()}
    for spec in phases:
        repo_id, subfolder = spec.get("repo_id", SHARDED), spec.get("subfolder", SUB)
        call = functools.partial(
            prefetch_distributed,
            repo_id,
            [spec.get("bad_subfolder", subfolder)],
            cache_dir=spec["cache_dir"],
            group=group,
            cache_scope=spec.get("scope", "auto"),
            fanout=spec.get("fanout"),
        )
        rec = dist_ranks.timed_phase(call, repo_id=repo_id, subfolder=subfolder, cache_dir=spec["cache_dir"])
        out["phases"].append(rec)
    if control_timeout:
        # Proof that the group's short timeout is real: a collective that one rank joins late fails.
        if rank == 0:
            time.sleep(float(group_timeout or 0) + 1.5)
        try:
            dist.barrier(group=group)
            out["control"] = "ok"
        except Exception as exc:
            out["control"] = f"{type(exc).__name__}: {exc}"[:200]
    return out


# ----------------------------------------------------------------------------- helpers


def _env(hf_env: dict[str, Any], **extra: str) -> dict[str, Any]:
    return dist_ranks.worker_env(hf_env, lease_ttl=2, **extra)


def _run(env: dict[str, Any], kwargs: list[dict[str, Any]], timeout: float = 150) -> list[dict[str, Any]]:
    with dist_ranks.pool(TARGET, env, kwargs, timeout) as workers:
        workers.wait_ready()
        workers.go()
        return dist_ranks.ok(workers.results())


def _metadata(requests: Sequence[Any]) -> int:
    return sum(q.kind in ("revision", "tree", "other") for q in requests)


def _served(requests: Sequence[Any], filename: str) -> int:
    return sum(q.full_body and q.filename == filename for q in requests)


def _model_files(hub: Any, commit: str, repo_id: str = SHARDED, sub: str = SUB) -> list[str]:
    return [f for f in hub.store.files(repo_id, commit) if f.startswith(f"{sub}/") or not sub]


# ----------------------------------------------------------------------------- tests


# Two ranks per node in the suite; the full-size job (two nodes of four ranks) is a `soak` case (`make soak`).
@pytest.mark.parametrize("per_node", [2, pytest.param(4, marks=pytest.mark.soak)])
def test_two_nodes_of_several_ranks_download_once_per_cache_domain(
    local_hub: Any, built_repos: Any, hf_env: dict[str, Any], tmp_path: Path, per_node: int
) -> None:
    """Node-local caches: each file served once per node with the peer fan-out off, once in all with it
    on (node-b's leader receives from node-a's); one shared cache: once in all. Domains are found by the
    probe files (scope "auto"), not declared."""
    env = _env(hf_env)
    local_hub.set_bandwidth(1_000_000.0)
    hosts = ["node-a"] * per_node + ["node-b"] * per_node
    local = [{"cache_dir": str(tmp_path / "local" / h / "hub"), "fanout": False} for h in hosts]
    fanout = [{"cache_dir": str(tmp_path / "fanout" / h / "hub")} for h in hosts]
    shared = {"cache_dir": str(tmp_path / "shared" / "hub")}
    phases: list[dict[str, Any] | list[dict[str, Any]]] = [
        local,
        shared,
        shared,  # finds the shared cache warm
        fanout,
    ]
    values = _run(
        env, dist_ranks.rank_kwargs(tmp_path, hosts, phases, baseline_cache=str(tmp_path / "alone"))
    )
    base = values[0]["baseline"]
    alone = base["t2"] - base["t0"]
    built = built_repos["sharded"]
    files = _model_files(local_hub, built.commit)
    for i, (name, domains) in [(0, ("node-local", 2)), (1, ("shared", 1)), (3, ("node-local, fan-out", 1))]:
        recs = dist_ranks.phase(values, i)
        dist_ranks.all_loaded(recs, built)
        # With the fan-out, node-b's leader "downloaded" from node-a's, not from the Hub.
        assert [r["rank"] for r in recs if r["downloaded"]] == ([0, per_node] if i != 1 else [0])
        requests = dist_ranks.window(local_hub, recs)
        for f in files:
            assert _served(requests, f) == domains, (name, f)
        model_bytes = recs[0]["bytes_total"]
        served = sum(q.bytes_sent for q in requests if q.kind == "get")
        assert served == domains * model_bytes, name
        # Rank 0 resolves main once (its listing serves its own domain); every other domain asks once.
        assert _metadata(requests) == domains, name
        elapsed = max(r["t2"] for r in recs) - min(r["t0"] for r in recs)
        print(
            f"\n[2 nodes x {per_node} ranks, {name} cache] "
            f"bytes served / model size = {served / model_bytes:.2f}; time until all {len(hosts)} loaded = "
            f"{elapsed:.2f} s = {elapsed / alone:.2f} x one process alone "
            f"({alone:.2f} s); metadata requests {_metadata(requests)}, "
            f"HEAD {sum(q.kind == 'head' for q in requests)}"
        )
        # Waiting ranks finish at the leader's pace; one download per rank would cost 4-8 x the bytes.
        assert elapsed < 3.0 * alone + 5.0, (name, elapsed, alone)
    warm = dist_ranks.phase(values, 2)
    assert all(r["ok"] and not r["downloaded"] for r in warm), warm
    assert {r["fingerprint"] for r in warm} == {built.fingerprint}
    assert dist_ranks.window(local_hub, warm) == []  # a warm job costs the Hub nothing
    prefetched = max(r["t1"] for r in warm) - min(r["t0"] for r in warm)
    print(
        f"[2 nodes x {per_node} ranks, warm shared cache] 0 Hub requests; "
        f"all {len(hosts)} prefetched in {prefetched:.3f} s"
    )


@pytest.mark.parametrize("ranks", [2, pytest.param(4, marks=pytest.mark.soak)])  # full size: `make soak`
def test_slow_leader_does_not_trip_a_short_collective_timeout(
    local_hub: Any, built_repos: Any, hf_env: dict[str, Any], tmp_path: Path, ranks: int
) -> None:
    env = _env(hf_env)
    group_timeout = 2.0
    built = built_repos["sharded"]
    model_bytes = dist_ranks.model_bytes(local_hub, built.commit)
    # Throttled so that the download lasts about three collective timeouts.
    local_hub.set_bandwidth(model_bytes / (3 * group_timeout))
    phase = {"cache_dir": str(tmp_path / "hub")}
    kwargs = dist_ranks.rank_kwargs(
        tmp_path, ["node-a"] * ranks, [phase], group_timeout=group_timeout, control_timeout=True
    )
    values = _run(env, kwargs)
    recs = dist_ranks.phase(values, 0)
    dist_ranks.all_loaded(recs, built)
    download_s = recs[0]["t1"] - recs[0]["t0"]
    assert download_s > 2 * group_timeout, download_s
    followers = recs[1:]
    assert all(not r["downloaded"] and r["waited_s"] > group_timeout for r in followers), followers
    # The control: this group really does time out a collective that waits longer than its timeout.
    controls = [v["control"] for v in values[1:]]
    assert all(c != "ok" for c in controls), controls
    print(
        f"\n[slow leader] download {download_s:.1f} s vs group timeout {group_timeout:g} s; followers waited "
        f"{min(r['waited_s'] for r in followers):.1f}-{max(r['waited_s'] for r in followers):.1f} s; "
        f"control collective: {controls[0][:60]}"
    )


# Suite: the leader, its host-mate and one rank on the other host; all four ranks: `make soak`.
@pytest.mark.parametrize(
    "hosts",
    [
        ("node-a", "node-a", "node-b"),
        pytest.param(("node-a", "node-a", "node-b", "node-b"), marks=pytest.mark.soak),
    ],
    ids=["3-ranks", "4-ranks"],
)
def test_leader_killed_mid_download_the_others_take_over(
    local_hub: Any, built_repos: Any, hf_env: dict[str, Any], tmp_path: Path, hosts: tuple[str, ...]
) -> None:
    """A shared cache (lease lock, as on NFS) and two hosts: rank 0 is SIGKILLed while its download is
    stalled mid-shard. Its host-mate sees the pid gone at once; the other host's ranks see its heartbeat
    stop after the lease TTL. Every survivor loads the one commit; nobody hangs."""
    ttl = 2.0
    env = _env(hf_env, HUB_PREFETCH_LOCK="lease", HUB_PREFETCH_LEASE_TTL=f"{ttl:g}")
    built = built_repos["sharded"]
    shard = f"{SUB}/model-00002-of-00003.safetensors"
    stall = local_hub.stall(f"*/{shard}", after_bytes=10_000)
    phase = {"cache_dir": str(tmp_path / "shared" / "hub")}
    kwargs = dist_ranks.rank_kwargs(tmp_path, hosts, [phase])
    with dist_ranks.pool(TARGET, env, kwargs) as pool:
        pool.wait_ready()
        pool.go()
        deadline = time.monotonic() + 90
        while not any(
            q.filename == shard and q.bytes_sent > 0 and q.t_end is None for q in local_hub.requests()
        ):
            assert time.monotonic() < deadline, "the leader never reached the stalled shard"
            time.sleep(0.05)
        t_kill = time.time()
        pool.kill(0)
        local_hub.clear_fault(stall)
        results = pool.results()
    assert results[0].error_type == "Killed"
    values = dist_ranks.ok(results[1:])
    recs = dist_ranks.phase(values, 0)
    dist_ranks.all_loaded(recs, built)
    assert [r["rank"] for r in recs if r["downloaded"]] in ([1], [2], [3])
    finished = max(r["t2"] for r in recs) - t_kill
    assert finished < ttl + 30, finished
    model_bytes = recs[0]["bytes_total"]
    served = local_hub.bytes_served()
    assert served < 2 * model_bytes  # the part the leader got, then one full copy
    report = hub_prefetch.verify(SHARDED, [SUB], cache_dir=phase["cache_dir"], deep=True)
    assert report.ok, str(report)
    print(
        f"\n[leader killed] survivors all loaded {finished:.1f} s after the kill (lease ttl {ttl:g} s); "
        f"bytes served / model size = {served / model_bytes:.2f}"
    )


# Suite: two ranks on node-a and one on node-b (two domains, one shared); four ranks: `make soak`.
@pytest.mark.parametrize(
    "hosts",
    [
        ("node-a", "node-a", "node-b"),
        pytest.param(("node-a", "node-a", "node-b", "node-b"), marks=pytest.mark.soak),
    ],
    ids=["3-ranks", "4-ranks"],
)
def test_errors_reach_every_rank_and_rate_limits_are_honoured(
    local_hub: Any, built_repos: Any, hf_env: dict[str, Any], tmp_path: Path, hosts: tuple[str, ...]
) -> None:
    """Ranks on two nodes, four phases in the same processes:

    1. no such repo: RepoNotFound on every rank, after one metadata request in all;
    2. a bad subfolder on rank 2 only: InvalidRequestError on every rank, nobody left in a collective;
    3. the leader's download fails (403 on a shard, shared cache): the same error on every rank at once;
    4. 429 + Retry-After on the first metadata and file requests (node-local caches): every rank loads,
       each retry waits out Retry-After, metadata requests stay one per domain (+ the refused one).
    """
    env = _env(hf_env)
    shard = f"{SUB}/model-00002-of-00003.safetensors"
    local_hub.fail(f"/tiny/sharded-bert/resolve/*/{shard}", method="GET", status=403, count=1)
    local_hub.fail("/api/models/tiny/root-bert*", status=429, count=1, retry_after=1)
    local_hub.fail("/tiny/root-bert/resolve/*", status=429, count=2, retry_after=1)
    shared = str(tmp_path / "shared" / "hub")
    # Each domain asks the Hub itself here (no peer fan-out): the point is how each one's retries behave.
    local = [
        {
            "repo_id": "tiny/root-bert",
            "subfolder": "",
            "cache_dir": str(tmp_path / h / "hub"),
            "fanout": False,
        }
        for h in hosts
    ]
    phases: list[Any] = [
        {"repo_id": "tiny/no-such-repo", "cache_dir": shared},
        [
            {"cache_dir": shared, **({"bad_subfolder": "../escape"} if r == 2 else {})}
            for r in range(len(hosts))
        ],
        {"cache_dir": shared},
        local,
    ]
    values = _run(env, dist_ranks.rank_kwargs(tmp_path, hosts, phases))

    missing = dist_ranks.phase(values, 0)
    assert {r["error_type"] for r in missing} == {"RepoNotFound"}, missing
    assert len({r["error"] for r in missing}) == 1
    assert _metadata(dist_ranks.window(local_hub, missing)) == 1

    bad = dist_ranks.phase(values, 1)
    assert {r["error_type"] for r in bad} == {"InvalidRequestError"}, bad
    assert len({r["error"] for r in bad}) == 1
    assert not dist_ranks.window(local_hub, bad)

    failed = dist_ranks.phase(values, 2)
    assert {r["error_type"] for r in failed} == {"GatedRepoError"}, failed
    assert len({r["error"] for r in failed}) == 1
    spread = max(r["t1"] for r in failed) - failed[0]["t1"]
    assert spread < 2.0, spread

    limited = dist_ranks.phase(values, 3)
    root = built_repos["root"]
    dist_ranks.all_loaded(limited, root)
    requests = dist_ranks.window(local_hub, limited)
    refused = [q for q in requests if q.status == 429]
    assert len(refused) == 3
    # Each domain fetched each path once; each refusal cost one request (no storm of retries); the refused
    # client came back only after Retry-After. (huggingface_hub 2.x re-sends a refused HEAD once at once,
    # then waits: two refusals of one path may be one client's.)
    for key in {(q.method, q.path) for q in refused}:
        same = [q for q in requests if (q.method, q.path) == key]
        refusals = [q.t_end or q.t_start for q in same if q.status == 429]
        successes = [q.t_start for q in same if q.status != 429]
        assert len(successes) == 2 and len(same) == 2 + len(refusals), key
        assert max(successes) - max(refusals) >= 0.9, (key, refusals, successes)
    assert _metadata(requests) == 2 + 1  # one per domain, plus the one refused with 429
    files = [q.filename for q in requests if q.full_body]
    assert sorted(files) == sorted(
        2 * [f for f in local_hub.store.files("tiny/root-bert", root.commit) if f in set(files)]
    )
    print(
        f"\n[429 + Retry-After] {len(hosts)} ranks, 2 domains: metadata requests {_metadata(requests)} "
        f"(1 refused), HEAD {sum(q.kind == 'head' for q in requests)}, "
        f"GET {sum(q.kind == 'get' for q in requests)}; error spread after a leader failure {spread:.2f} s"
    )


# ----------------------------------------------------------------------------- pure parts and fallbacks


def _infos(*places: tuple[str, str]) -> list[Any]:
    from hub_prefetch.distributed import RankInfo

    return [RankInfo(r, host, path, f"t{r}") for r, (host, path) in enumerate(places)]


def test_plan_domains_from_probes_or_declared() -> None:
    from hub_prefetch.distributed import plan_domains

    # Two hosts mounting one NFS cache at different paths, a third host with its own disk.
    infos = _infos(("a", "/nfs/hub"), ("a", "/nfs/hub"), ("b", "/mnt/hub"), ("c", "/local/hub"))
    seen = [["t0", "t1", "t2"], ["t0", "t1"], ["t2", "t1"], ["t3"]]  # visibility need not be symmetric
    assert plan_domains(infos, seen).domains == ((0, 1, 2), (3,))
    assert plan_domains(infos, seen, "node").domains == ((0, 1), (2,), (3,))
    assert plan_domains(infos, seen, "shared").domains == ((0, 1, 2, 3),)
    # No probe visible at all (a failed write): same host and same path still share a domain.
    assert plan_domains(infos, [[], [], [], []]).domains == ((0, 1), (2,), (3,))
    plan = plan_domains(infos, seen)
    assert [plan.leader_of(r) for r in range(4)] == [0, 0, 0, 3]


def test_errors_cross_processes_as_the_same_type() -> None:
    from hub_prefetch import errors

    original = errors.LockTimeout("timed out", waited_s=1.5, holder={"host": "x"}, leader_rank=3)
    again = errors.from_json(json_roundtrip(errors.to_json(original)), origin_rank=2)
    assert type(again) is errors.LockTimeout and isinstance(again, TimeoutError)
    assert str(again) == "timed out" and again.waited_s == 1.5 and again.holder == {"host": "x"}
    assert again.leader_rank == 3 and again.origin_rank == 2
    failed = errors.IncompleteSnapshotError("bad", problems=["a: size"], repo_id="o/m")
    back = errors.from_json(json_roundtrip(errors.to_json(failed)))
    assert type(back) is errors.IncompleteSnapshotError and back.problems == ("a: size",)
    assert back.repo_id == "o/m"
    foreign = errors.from_json(json_roundtrip(errors.to_json(KeyError("boom"))))
    assert type(foreign) is errors.RemoteError and foreign.error_type == "KeyError" and "boom" in str(foreign)
    # Written by another version, with a fact this one does not declare: the type and message survive.
    odd = errors.from_json({"type": "LockTimeout", "typed": True, "message": "m", "facts": {"new": 1}})
    assert type(odd) is errors.LockTimeout and str(odd) == "m"


def json_roundtrip(data: Any) -> Any:
    import json

    return json.loads(json.dumps(data))


def test_without_a_process_group_it_is_plain_prefetch(
    local_hub: Any, hf_cache: Path, built_repos: Any
) -> None:
    from hub_prefetch.distributed import prefetch_distributed

    result = prefetch_distributed(SHARDED, [SUB], cache_dir=hf_cache)
    assert result.commit == built_repos["sharded"].commit and result.downloaded
    with pytest.raises(hub_prefetch.InvalidRequestError):
        prefetch_distributed(SHARDED, [SUB], cache_dir=hf_cache, cache_scope="galaxy")  # type: ignore[arg-type]


def test_torch_is_optional(local_hub: Any, hf_env: dict[str, Any]) -> None:
    """In a fresh interpreter where torch cannot be imported, the package imports and the call works."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import hub_prefetch\n"
        f"r = hub_prefetch.prefetch_distributed({SHARDED!r}, [{SUB!r}])\n"
        "assert 'torch' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n"
        "print(r.commit)\n"
    )
    env = {**os.environ, **{k: v for k, v in hf_env.items() if v is not None}}
    for key in (k for k, v in hf_env.items() if v is None):
        env.pop(key, None)
    cmd = [sys.executable, "-c", code]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == local_hub.store.resolve(SHARDED, "main")
