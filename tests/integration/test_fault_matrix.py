"""The fault matrix: real worker processes loading through hub-prefetch from the local Hub while a fault
is injected, on both stacks. Each case asserts outcomes: every load succeeded with the right tensors
(or failed with the typed error the fault calls for), the bytes and requests the Hub served, and the
files left on disk.

Cases already covered elsewhere are not repeated here (in-process repair of each damage shape in
test_prefetch.py, lock-level takeover in test_lock_processes.py, each knob against a bare client in
test_hub_faults.py); this file runs them end to end, through real loaders in several processes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _faultkit import (
    DISPATCH,
    PRELOAD,
    Crew,
    failures,
    needed_files,
    repo_dir,
    temp_files,
    wait_until,
    worker_env,
)

import hub_prefetch
from hub_prefetch.lock import list_locks
from hub_prefetch.testing.workers import WorkerPool

pytestmark = pytest.mark.slow

SHARDED = "tiny/sharded-bert"
SUB = "text_encoder"
WORKERS = 3


@pytest.fixture(scope="module")
def crew_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crew-home")


@pytest.fixture(scope="module")
def crew(local_hub, crew_home) -> Iterator[Crew]:
    c = Crew(WORKERS, worker_env(local_hub.url, crew_home, HF_HUB_DOWNLOAD_TIMEOUT="3"))
    yield c
    c.close()


@pytest.fixture
def sharded(built_repos, hub_store):
    built = built_repos["sharded"]
    return built, needed_files(hub_store, built)


def _load(cache: Path, **extra) -> dict:
    return {"action": "load", "repo_id": SHARDED, "subfolder": SUB, "cache_dir": str(cache), **extra}


def _assert_loaded(results, built) -> None:
    assert not failures(results), failures(results)
    assert {r.value["fingerprint"] for r in results} == {built.fingerprint}


def _assert_clean_cache(cache: Path) -> None:
    assert temp_files(cache) == []
    report = hub_prefetch.verify(SHARDED, [SUB], cache_dir=cache, deep=True)
    assert report.ok, str(report)
    held = [i for i in list_locks(cache) if i.holder is not None and not i.stale]
    assert held == [], held


def _complete_bytes(hub, filename: str) -> int:
    """Body bytes of the GETs of ``filename`` that ran to their end (200 or 206)."""
    return sum(
        r.bytes_sent for r in hub.requests() if r.kind == "get" and r.filename == filename and r.complete
    )


def _etag(hub_store, built, path: str) -> str:
    f = hub_store.files(built.repo_id, built.commit)[path]
    return f.sha256 if f.is_lfs else f.git_sha1


def _stored_blobs(cache: Path) -> set[str]:
    blobs = repo_dir(cache, SHARDED) / "blobs"
    return {p.name for p in blobs.iterdir() if "." not in p.name} if blobs.is_dir() else set()


def _partial_gets(hub, filename: str) -> list:
    return [r for r in hub.requests() if r.kind == "get" and r.filename == filename and not r.complete]


# ------------------------------------------------------------------------------ a downloader killed


@pytest.mark.timeout(400)
@pytest.mark.parametrize("backend", ["auto", "lease"])
def test_downloader_sigkilled_at_a_random_byte_of_a_shard(
    local_hub, hub_store, sharded, tmp_path, crew_home, backend
):
    """The lock holder is parked at a random byte of one shard and SIGKILLed; the survivors load the
    right tensors, no byte is served twice except the dead one's partial shard, no temp file stays."""
    built, needed = sharded
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    shard = rng.choice(sorted(p for p in needed if p.endswith(".safetensors")))
    cut = rng.randrange(1, needed[shard])
    print(f"\nseed {seed}: {shard} cut at byte {cut} of {needed[shard]} ({backend})")
    cache = tmp_path / "cache"
    ttl = 1.0
    env = worker_env(local_hub.url, crew_home, HUB_PREFETCH_LOCK=backend, HUB_PREFETCH_LEASE_TTL=str(ttl))
    stall = local_hub.stall(f"*/resolve/*/{shard}", after_bytes=cut)
    with WorkerPool(DISPATCH, _load(cache), n=1, env=env, preload=PRELOAD, timeout=120) as victim:
        victim.wait_ready()
        victim.go()
        wait_until(
            lambda: any(r.fault == "stall" and r.bytes_sent == cut for r in _partial_gets(local_hub, shard)),
            what="the downloader parked mid-shard",
        )
        victim.kill(0)
        (dead,) = victim.results(timeout=30)
    assert dead.error_type == "Killed"
    local_hub.clear_fault(stall)
    killed_at = time.time()
    (parked,) = _partial_gets(local_hub, shard)
    assert parked.bytes_sent == cut
    orphans = [p for p in temp_files(cache) if p.name.endswith(".incomplete")]
    assert orphans, "the dead downloader left its partial shard behind (the case under test)"
    # Whatever else was in flight may or may not have reached the disk: what is stored is not fetched again.
    stored = _stored_blobs(cache)
    missing = {p: size for p, size in needed.items() if _etag(hub_store, built, p) not in stored}
    assert shard in missing
    local_hub.reset_log()
    with WorkerPool(DISPATCH, _load(cache), n=WORKERS, env=env, preload=PRELOAD, timeout=180) as survivors:
        survivors.wait_ready()
        if backend == "lease":
            # Where flock cannot be trusted a temp file is an orphan only once older than the lease TTL.
            wait_until(lambda: time.time() - killed_at > ttl, what="orphan older than the lease TTL")
        survivors.go()
        results = survivors.results()
    _assert_loaded(results, built)
    for path in needed:
        assert local_hub.times_served(path) == (path in missing), path
    assert local_hub.bytes_served() == sum(missing.values())
    print(f"survivors fetched {sorted(missing)}; dead one's part: {cut} bytes")
    _assert_clean_cache(cache)


# ------------------------------------------------------------------------------ the network misbehaves


def _network_case(hub, crew, built, needed, cache, inject) -> list:
    hub.reset_log()
    results = crew.run(_load(cache), before_go=inject)
    _assert_loaded(results, built)
    for path, size in needed.items():
        assert _complete_bytes(hub, path) == size, (path, _complete_bytes(hub, path), size)
    _assert_clean_cache(cache)
    return results


def test_5xx_on_body_gets_is_retried_by_whoever_holds_the_lock(local_hub, crew, sharded, tmp_path):
    built, needed = sharded
    shard = f"{SUB}/model-00002-of-00003.safetensors"
    _network_case(
        local_hub,
        crew,
        built,
        needed,
        tmp_path / "c",
        lambda: local_hub.fail(f"*/resolve/*/{shard}", method="GET", status=503, count=3),
    )
    statuses = [r.status for r in local_hub.requests() if r.kind == "get" and r.filename == shard]
    assert statuses == [503, 503, 503, 200]
    assert local_hub.bytes_served() == sum(needed.values())


def test_429_with_retry_after_on_a_body_get_is_honoured(local_hub, crew, sharded, tmp_path):
    built, needed = sharded
    shard = f"{SUB}/model-00003-of-00003.safetensors"
    _network_case(
        local_hub,
        crew,
        built,
        needed,
        tmp_path / "c",
        lambda: local_hub.fail(f"*/resolve/*/{shard}", method="GET", status=429, count=1, retry_after=1.5),
    )
    gets = [r for r in local_hub.requests() if r.kind == "get" and r.filename == shard]
    assert [r.status for r in gets] == [429, 200]
    assert gets[1].t_start - gets[0].t_end >= 1.5  # a lower bound on a mandated wait
    assert local_hub.bytes_served() == sum(needed.values())


def test_connections_dropped_mid_body_cost_only_the_dropped_bytes(local_hub, crew, sharded, tmp_path):
    built, needed = sharded
    shard = f"{SUB}/model-00001-of-00003.safetensors"
    cut = needed[shard] // 3
    _network_case(
        local_hub,
        crew,
        built,
        needed,
        tmp_path / "c",
        lambda: local_hub.drop_after(f"*/resolve/*/{shard}", cut, count=2),
    )
    partial = _partial_gets(local_hub, shard)
    assert [r.bytes_sent for r in partial] == [cut, cut]
    served, total = local_hub.bytes_served(), sum(needed.values())
    print(f"\ndropped twice mid-body: bytes served / needed = {served / total:.3f}")
    assert served == total + 2 * cut


def test_a_stalled_body_times_out_and_is_fetched_again(local_hub, crew, sharded, tmp_path):
    built, needed = sharded
    shard = f"{SUB}/model-00002-of-00003.safetensors"
    cut = needed[shard] // 2
    t0 = time.time()
    results = _network_case(
        local_hub,
        crew,
        built,
        needed,
        tmp_path / "c",
        lambda: local_hub.stall(f"*/resolve/*/{shard}", after_bytes=cut, count=1),
    )
    (stalled,) = _partial_gets(local_hub, shard)
    assert stalled.bytes_sent == cut and stalled.fault == "stall"
    took = max(r.t_end for r in results) - t0
    print(f"\nstalled body: all loaded after {took:.1f} s (client read timeout 3 s)")
    assert took < 60
