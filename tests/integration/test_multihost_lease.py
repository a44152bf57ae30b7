"""Independent processes on several "hosts" sharing one cache folder, without torch.distributed.

A shared filesystem is simulated by one cache folder and the lease lock (``HUB_PREFETCH_LOCK=lease``,
what ``auto`` picks on NFS and friends); each process is its own machine (its own mount namespace and
boot id, :mod:`_machines`), so no process can judge another's pid and only heartbeats count. The
processes call :func:`hub_prefetch.distributed.prefetch_distributed`, which without an initialised
process group is plain :func:`hub_prefetch.prefetch`: the lease alone coordinates them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from _machines import REFUSED

pytestmark = [pytest.mark.slow, pytest.mark.skipif(REFUSED is not None, reason=REFUSED or "")]

SHARDED = "tiny/sharded-bert"
SUB = "text_encoder"
HERE = Path(__file__).resolve().parent
LOAD = f"{Path(__file__).stem}:host_load"
HOLD = f"{Path(__file__).stem}:host_hold"
PRELOAD = ("transformers", "transformers.models.bert.modeling_bert", "hub_prefetch.testing.repos")
TTL = 2.0


# ----------------------------------------------------------------------------- worker targets


def host_load(*, host_id: str, cache_dir: str) -> dict[str, Any]:
    """One "host": prefetch (no process group), then load with local_files_only."""
    from _machines import become_machine

    become_machine(host_id, Path(cache_dir).parent)
    os.environ["HUB_PREFETCH_HOST_ID"] = host_id
    import transformers

    from hub_prefetch.distributed import prefetch_distributed
    from hub_prefetch.testing.repos import tensor_fingerprint

    t0 = time.time()
    result = prefetch_distributed(SHARDED, [SUB], cache_dir=cache_dir)
    t1 = time.time()
    model = transformers.AutoModel.from_pretrained(
        SHARDED, subfolder=SUB, revision=result.commit, cache_dir=cache_dir, local_files_only=True
    )
    return {
        "host": host_id,
        "commit": result.commit,
        "downloaded": list(result.downloaded),
        "waited_s": result.waited_s,
        "bytes_total": result.bytes_total,
        "fingerprint": tensor_fingerprint(model),
        "t0": t0,
        "t1": t1,
        "t2": time.time(),
    }


def host_hold(*, host_id: str, cache_dir: str, ready_file: str, hold_s: float) -> dict[str, Any]:
    """Take the repo lease that a prefetch of ``main`` takes, say so in ``ready_file``, hold ``hold_s``."""
    from _machines import become_machine

    from hub_prefetch.lock import RepoLock

    become_machine(host_id, Path(cache_dir).parent)
    lock = RepoLock(cache_dir, SHARDED, revision="main", backend="lease", lease_ttl=TTL, host_id=host_id)
    with lock:
        Path(ready_file).write_text(str(time.time()))
        time.sleep(hold_s)
        t_release = time.time()
    return {"t_release": t_release}


# ----------------------------------------------------------------------------- helpers


def _env(hf_env: dict[str, Any]) -> dict[str, Any]:
    env = dict(hf_env)
    old = os.environ.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *([old] if old else [])])
    env.update(HUB_PREFETCH_LOCK="lease", HUB_PREFETCH_LEASE_TTL=f"{TTL:g}")
    return env


def _ok(results: Sequence[Any]) -> list[dict[str, Any]]:
    assert all(r.ok for r in results), [(r.index, r.error_type, r.error, r.stderr[-1500:]) for r in results]
    return [r.value for r in results]


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _check_loaded(values: Sequence[dict[str, Any]], built: Any, hub: Any) -> None:
    assert {v["commit"] for v in values} == {built.commit}
    assert {v["fingerprint"] for v in values} == {built.fingerprint}
    assert sum(bool(v["downloaded"]) for v in values) == 1, [v["downloaded"] for v in values]
    for f in hub.store.files(SHARDED, built.commit):
        if f.startswith(f"{SUB}/"):
            assert hub.times_served(f) == 1, f


# ----------------------------------------------------------------------------- tests


# Three hosts in the suite; six (the full size) are a `soak` case, run by `make soak`.
@pytest.mark.parametrize("hosts", [3, pytest.param(6, marks=pytest.mark.soak)])
def test_several_hosts_sharing_one_cache_download_once(
    local_hub: Any, built_repos: Any, hf_env: dict[str, Any], tmp_path: Path, hosts: int
) -> None:
    from hub_prefetch.testing import run_workers

    local_hub.set_bandwidth(1_000_000.0)
    cache = str(tmp_path / "nfs" / "hub")
    kwargs = [{"host_id": f"host-{i}", "cache_dir": cache} for i in range(hosts)]
    values = _ok(run_workers(LOAD, kwargs, n=hosts, env=_env(hf_env), timeout=120, preload=PRELOAD))
    _check_loaded(values, built_repos["sharded"], local_hub)
    served = local_hub.bytes_served()
    model_bytes = values[0]["bytes_total"]
    assert served == model_bytes
    metadata = sum(local_hub.counts()[k] for k in ("revision", "tree", "other"))
    assert metadata == 1  # the holder asks; the others find the fresh record under the lease
    elapsed = max(v["t2"] for v in values) - min(v["t0"] for v in values)
    print(
        f"\n[{hosts} hosts, one cache, lease] bytes served / model size = {served / model_bytes:.2f}; "
        f"metadata requests {metadata}; all loaded in {elapsed:.2f} s"
    )


@pytest.mark.parametrize("waiters", [2, pytest.param(3, marks=pytest.mark.soak)])  # full size: `make soak`
def test_stale_lease_of_a_dead_host_is_recovered_after_its_ttl(
    local_hub: Any, built_repos: Any, hf_env: dict[str, Any], tmp_path: Path, waiters: int
) -> None:
    """A holder on "host-dead" takes the lease and is SIGKILLed: its lease file stays behind. Processes on
    other hosts cannot see its pid; they take over once the file stayed unchanged for the TTL, not
    before, and exactly one of them downloads."""
    from hub_prefetch.testing import WorkerPool, run_workers

    env = _env(hf_env)
    cache = tmp_path / "nfs" / "hub"
    ready = tmp_path / "held"
    holder = {"host_id": "host-dead", "cache_dir": str(cache), "ready_file": str(ready), "hold_s": 300}
    with WorkerPool(HOLD, [holder], n=1, env=env, timeout=60) as pool:
        pool.wait_ready()
        pool.go()
        _wait_for(ready)
        pool.kill(0)
        assert pool.results()[0].error_type == "Killed"
    leases = list((cache / ".locks" / "hub_prefetch").glob("*.lease"))
    assert len(leases) == 1, leases  # the dead host's lease is still there

    kwargs = [{"host_id": f"host-{i}", "cache_dir": str(cache)} for i in range(1, waiters + 1)]
    values = _ok(run_workers(LOAD, kwargs, n=waiters, env=env, timeout=120, preload=PRELOAD))
    _check_loaded(values, built_repos["sharded"], local_hub)
    first = min(values, key=lambda v: v["t1"])
    # Recovered after the TTL (judged on the waiter's own clock), and promptly after it.
    assert TTL * 0.9 <= first["waited_s"] < TTL + 10, first["waited_s"]
    print(
        f"\n[dead host's lease] taken over after {first['waited_s']:.2f} s (ttl {TTL:g} s); "
        f"all {waiters} hosts loaded "
        f"{max(v['t2'] for v in values) - min(v['t0'] for v in values):.2f} s after start"
    )


def test_live_holder_on_another_host_is_never_evicted(
    local_hub: Any, built_repos: Any, hf_env: dict[str, Any], tmp_path: Path
) -> None:
    """The control of the test above: a holder that keeps its heartbeat for three TTLs is waited for."""
    from hub_prefetch.testing import WorkerPool

    env = _env(hf_env)
    cache = tmp_path / "nfs" / "hub"
    ready = tmp_path / "held"
    hold_s = 3 * TTL
    holder = {"host_id": "host-live", "cache_dir": str(cache), "ready_file": str(ready), "hold_s": hold_s}
    waiters = [{"host_id": f"host-{i}", "cache_dir": str(cache)} for i in range(1, 3)]
    with (
        WorkerPool(HOLD, [holder], n=1, env=env, timeout=60) as hold_pool,
        WorkerPool(LOAD, waiters, n=2, env=env, timeout=120, preload=PRELOAD) as pool,
    ):
        pool.wait_ready()
        hold_pool.wait_ready()
        hold_pool.go()
        _wait_for(ready)
        pool.go()
        (held,) = _ok(hold_pool.results())
        values = _ok(pool.results())
    _check_loaded(values, built_repos["sharded"], local_hub)
    first_get = min(q.t_start for q in local_hub.requests() if q.kind == "get")
    assert first_get >= held["t_release"], "a waiter downloaded while the live holder held the lease"
    assert min(v["waited_s"] for v in values) > hold_s - 2 * TTL
