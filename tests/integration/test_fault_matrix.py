"""The fault matrix: real worker processes loading through hub-prefetch from the local Hub while a fault
is injected, on both stacks. Each case asserts outcomes: every load succeeded with the right tensors
(or failed with the typed error the fault calls for), the bytes and requests the Hub served, and the
files left on disk.

Cases already covered elsewhere are not repeated here (in-process repair of each damage shape in
test_prefetch.py, lock-level takeover in test_lock_processes.py, each knob against a bare client in
test_hub_faults.py); this file runs them end to end, through real loaders in several processes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import pytest
from _faultkit import (
    DISPATCH,
    PRELOAD,
    Crew,
    failures,
    needed_files,
    read_only_view,
    remount_size,
    repo_dir,
    temp_files,
    tmpfs,
    tree_state,
    wait_until,
    worker_env,
)

import hub_prefetch
from hub_prefetch.lock import list_locks
from hub_prefetch.testing.workers import WorkerPool

pytestmark = pytest.mark.slow

SHARDED = "tiny/sharded-bert"
SUB = "text_encoder"
#: Loaders per case: a lock holder and a waiter. The many-loader version is benchmarks/soak.py (`make soak`):
#: most faults of this matrix, injected into 8 loaders, round after round.
WORKERS = 2


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
    assert _partials(cache) == {}
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


def _partials(cache: Path) -> dict[str, int]:
    """The engine's resumable partial files (etag -> bytes on disk)."""
    folder = repo_dir(cache, SHARDED) / ".hub_prefetch" / "partial"
    if not folder.is_dir():
        return {}
    return {p.name: p.stat().st_size for p in folder.iterdir() if "." not in p.name}


def _partial_gets(hub, filename: str) -> list:
    return [r for r in hub.requests() if r.kind == "get" and r.filename == filename and not r.complete]


def _stalled(hub, filename: str) -> bool:
    return any(r.fault == "stall" for r in _partial_gets(hub, filename))


# ------------------------------------------------------------------------------ a downloader killed


@pytest.mark.timeout(400)
@pytest.mark.parametrize(
    ("backend", "flock"),
    [("auto", "ok"), ("lease", "ok"), ("auto", "ENOSYS")],
    ids=["flock", "lease", "no-flock"],
)
def test_downloader_sigkilled_at_a_random_byte_of_a_shard(
    local_hub, hub_store, crew, sharded, tmp_path, crew_home, backend, flock
):
    """The lock holder is parked at a random byte of one shard and SIGKILLed; the survivors load the
    right tensors and resume the dead one's partial shard: no byte is served twice, no temp file stays."""
    built, needed = sharded
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    shard = rng.choice(sorted(p for p in needed if p.endswith(".safetensors")))
    cut = rng.randrange(1, needed[shard])
    print(f"\nseed {seed}: {shard} cut at byte {cut} of {needed[shard]} ({backend})")
    cache = tmp_path / "cache"
    # Where the lease is in use (asked for, or flock unusable) a temp file is an orphan only once untouched
    # for a TTL: a short one keeps the case quick; 1 s could evict a live holder on a loaded runner.
    leased = backend == "lease" or flock != "ok"
    ttl = 2.0 if leased else 30.0
    env = worker_env(local_hub.url, crew_home, HUB_PREFETCH_LOCK=backend, HUB_PREFETCH_LEASE_TTL=str(ttl))
    stall = local_hub.stall(f"*/resolve/*/{shard}", after_bytes=cut)
    with WorkerPool(
        DISPATCH, _load(cache, flock=flock), n=1, env=env, preload=PRELOAD, timeout=120
    ) as victim:
        victim.wait_ready()
        victim.go()
        wait_until(
            lambda: any(r.fault == "stall" and r.bytes_sent == cut for r in _partial_gets(local_hub, shard)),
            what="the downloader parked mid-shard",
        )
        # Killed once its partial file holds every byte the Hub sent (none still in socket buffers).
        etag = _etag(hub_store, built, shard)
        wait_until(lambda: _partials(cache).get(etag) == cut, what="the sent bytes written")
        victim.kill(0)
        (dead,) = victim.results(timeout=30)
    assert dead.error_type == "Killed"
    local_hub.clear_fault(stall)
    (parked,) = _partial_gets(local_hub, shard)
    assert parked.bytes_sent == cut
    partials = _partials(cache)
    assert partials.get(etag) == cut, partials  # the dead one's partial shard: the case under test
    # Whatever else was in flight may or may not have reached the disk: what is stored is not fetched again.
    stored = _stored_blobs(cache)
    missing = {p: size for p, size in needed.items() if _etag(hub_store, built, p) not in stored}
    assert shard in missing
    local_hub.reset_log()
    survivors_kwargs = _load(cache, flock=flock, dump_after=80)

    # Only a lock holder opens a partial file: no age to wait for, whatever the backend.
    resumed = sum(n for etag, n in partials.items() if etag in {_etag(hub_store, built, p) for p in missing})

    if flock == "ok":
        # The survivors are the module's crew (imports already paid), with the victim's lock settings.
        lock_env = {"HUB_PREFETCH_LOCK": backend, "HUB_PREFETCH_LEASE_TTL": str(ttl)}
        results = crew.run({**survivors_kwargs, "env": lock_env}, timeout=120)
    else:
        # A process that met a raising flock turns huggingface_hub's per-blob locks off for good
        # (hub_prefetch.prefetch._replace_blob_locks): fresh survivors here, so that the crew keeps real
        # blob locks for the cases that rely on them (a live writer's blob is waited for, not fetched).
        with WorkerPool(
            DISPATCH, survivors_kwargs, n=WORKERS, env=env, preload=PRELOAD, timeout=120
        ) as survivors:
            survivors.wait_ready()
            survivors.go()
            results = survivors.results()
    _assert_loaded(results, built)
    etags = {p: _etag(hub_store, built, p) for p in needed}
    for path, size in needed.items():
        expect = size - partials.get(etags[path], 0) if path in missing else 0
        assert local_hub.bytes_served(path) == expect, path
    assert local_hub.bytes_served() == sum(missing.values()) - resumed
    print(f"survivors fetched {sorted(missing)}, resuming {resumed} bytes; dead one's part: {cut} bytes")
    _assert_clean_cache(cache)


# ------------------------------------------------------------------------------ the network misbehaves


def _network_case(hub, crew, built, needed, cache, inject) -> list:
    hub.reset_log()
    results = crew.run(_load(cache), before_go=inject)
    _assert_loaded(results, built)
    for path, size in needed.items():
        gets = [r for r in hub.requests() if r.kind == "get" and r.filename == path]
        # Every byte arrived, the last request ran to its end (a cut one is resumed with a Range).
        assert gets and gets[-1].complete and hub.bytes_served(path) >= size, (path, gets)
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


def test_connections_dropped_mid_body_resume_where_they_were_cut(local_hub, crew, sharded, tmp_path):
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
    gets = [r for r in local_hub.requests() if r.kind == "get" and r.filename == shard]
    # The second attempt was cut at `cut` bytes of the range that started at `cut`.
    assert [r.range_start for r in gets] == [None, cut, 2 * cut]
    served, total = local_hub.bytes_served(), sum(needed.values())
    print(f"\ndropped twice mid-body: bytes served / needed = {served / total:.3f}")
    assert served == total


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


# ------------------------------------------------------------------------------ the cache is damaged

SHARD2 = f"{SUB}/model-00002-of-00003.safetensors"


def _warm(cache: Path, hub) -> Path:
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=cache)
    hub.reset_log()
    return Path(result.snapshot_path)


def _flip(snapshot: Path) -> None:
    blob = (snapshot / SHARD2).resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) - 100] ^= 0xFF  # in the tensor data, past the header: loads, with a wrong value
    blob.write_bytes(bytes(data))


def _truncate(snapshot: Path) -> None:
    blob = (snapshot / SHARD2).resolve()
    with open(blob, "r+b") as fh:
        fh.truncate(blob.stat().st_size // 2)


def _dangle(snapshot: Path) -> None:
    (snapshot / SHARD2).resolve().unlink()


def _drop_config(snapshot: Path) -> None:
    (snapshot / SUB / "config.json").unlink()


DAMAGE = {
    "flipped-byte": (_flip, SHARD2),
    "truncated-blob": (_truncate, SHARD2),
    "dangling-link": (_dangle, SHARD2),
    "config-missing-beside-weights": (_drop_config, f"{SUB}/config.json"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_cache_is_repaired_file_by_file_under_concurrent_loaders(
    local_hub, crew, sharded, tmp_path, damage
):
    built, needed = sharded
    cache = tmp_path / "c"
    snapshot = _warm(cache, local_hub)
    hurt, victim = DAMAGE[damage]
    hurt(snapshot)
    # Same-size corruption is invisible to the stat-only warm path: sha256 is checked on demand.
    env = {"HUB_PREFETCH_DEEP_VERIFY": "1"} if damage == "flipped-byte" else None
    results = crew.run(_load(cache, env=env))
    _assert_loaded(results, built)
    got = local_hub.requests()
    bodies = [r.filename for r in got if r.kind == "get"]
    if damage == "config-missing-beside-weights":
        # the blob is still there: one HEAD finds it and the link is made again, no body is needed
        assert bodies in ([], [victim]), bodies
    else:
        assert bodies == [victim], bodies
    assert local_hub.bytes_served() <= needed[victim]
    _assert_clean_cache(cache)


def test_orphan_temp_of_a_dead_writer_beside_a_live_writers(
    local_hub, hub_store, crew, sharded, tmp_path, crew_home
):
    """Two plain writers outside our lock: one SIGKILLed mid-body (its temp is an orphan), one parked
    mid-body (alive). Loaders remove the orphan, leave the live temp alone, wait for the live writer's
    blob instead of fetching it again, and load the right tensors."""
    built, needed = sharded
    cache = tmp_path / "c"
    dead_file, live_file = (
        f"{SUB}/model-00001-of-00003.safetensors",
        f"{SUB}/model-00002-of-00003.safetensors",
    )
    for path in (dead_file, live_file):
        local_hub.stall(f"*/resolve/*/{path}", after_bytes=needed[path] // 2)
    writers_kwargs = [
        {"action": "plain_download", "repo_id": SHARDED, "filename": p, "cache_dir": str(cache)}
        for p in (dead_file, live_file)
    ]
    env = worker_env(local_hub.url, crew_home)
    with WorkerPool(DISPATCH, writers_kwargs, n=2, env=env, preload=PRELOAD, timeout=180) as writers:
        writers.wait_ready()
        writers.go()
        for path in (dead_file, live_file):
            stalled = functools.partial(_stalled, local_hub, path)
            wait_until(stalled, what=path)
        writers.kill(0)
        # SIGKILL is asynchronous: the dead writer's blob lock is released only once it has exited. Wait for
        # that (without reaping it: the pool does), or a quick loader finds the lock still held and, rightly,
        # leaves the temp file alone (seen on a loaded runner).
        os.waitid(os.P_PID, writers.pids[0], os.WEXITED | os.WNOWAIT)
        blobs = repo_dir(cache, SHARDED) / "blobs"
        dead_tmp = [p for p in blobs.iterdir() if p.name.startswith(_etag(hub_store, built, dead_file))]
        live_tmp = [p for p in blobs.iterdir() if p.name.startswith(_etag(hub_store, built, live_file))]
        assert len(dead_tmp) == 1 and len(live_tmp) == 1, sorted(blobs.iterdir())

        import threading

        outcome: dict = {}
        loaders = threading.Thread(target=lambda: outcome.update(results=crew.run(_load(cache))))
        loaders.start()
        try:
            wait_until(lambda: not dead_tmp[0].exists(), what="the orphan removed")
            assert live_tmp[0].exists()  # a live writer's temp file is never touched
        finally:
            local_hub.clear_faults()  # the live writer may finish now
            loaders.join(240)
        writer_results = writers.results()
    assert not loaders.is_alive()
    _assert_loaded(outcome["results"], built)
    assert writer_results[0].error_type == "Killed"
    assert writer_results[1].ok, writer_results[1].error  # its temp file was there to the end
    assert local_hub.times_served(live_file) == 1  # the loaders waited for the live writer's blob
    assert local_hub.times_served(dead_file) == 1  # the dead one's part, then once in full
    _assert_clean_cache(cache)


# ------------------------------------------------------------------------------ the lock misbehaves


@pytest.mark.parametrize(
    "mode",
    [
        "ENOLCK",
        "EOPNOTSUPP",
        "ENOSYS",
        "noop",
    ],
)
def test_flock_raising_or_doing_nothing_still_one_download(local_hub, crew, sharded, tmp_path, mode):
    built, needed = sharded
    cache = tmp_path / "c"
    results = crew.run(_load(cache, flock=mode), timeout=120)
    _assert_loaded(results, built)
    for path in needed:
        assert local_hub.times_served(path) == 1, path
    assert local_hub.bytes_served() == sum(needed.values())
    _assert_clean_cache(cache)


def _holder_kwargs(cache: Path, tmp_path: Path, **extra) -> dict:
    return {
        "action": "hold_lock",
        "cache_dir": str(cache),
        "repo_id": SHARDED,
        "marker": str(tmp_path / "held"),
        "release": str(tmp_path / "release"),
        **extra,
    }


def test_stale_lease_of_a_dead_holder_on_another_host_is_taken_over(
    local_hub, crew, sharded, tmp_path, crew_home
):
    built, needed = sharded
    cache, ttl = tmp_path / "c", 1.0
    lease_env = {"HUB_PREFETCH_LOCK": "lease", "HUB_PREFETCH_LEASE_TTL": str(ttl)}
    holder_kwargs = _holder_kwargs(cache, tmp_path, backend="lease", host_id="node-b", lease_ttl=ttl)
    env = worker_env(local_hub.url, crew_home)
    with WorkerPool(DISPATCH, holder_kwargs, n=1, env=env, timeout=60) as holder:
        holder.wait_ready()
        holder.go()
        wait_until((tmp_path / "held").exists, what="the lease taken")
        holder.kill(0)
        holder.results(timeout=30)
    (stale,) = [i for i in list_locks(cache) if i.backend == "lease"]
    assert stale.holder is not None and stale.holder.host == "node-b"
    t0 = time.time()
    results = crew.run(_load(cache, env=lease_env), timeout=120)
    _assert_loaded(results, built)
    took = max(r.t_end for r in results) - t0
    print(f"\nstale lease of a dead holder on another host: everyone loaded after {took:.1f} s (ttl {ttl} s)")
    assert took < 60
    for path in needed:
        assert local_hub.times_served(path) == 1, path
    _assert_clean_cache(cache)


def test_a_holder_stuck_forever_gives_waiters_a_typed_timeout(local_hub, crew, sharded, tmp_path, crew_home):
    built, needed = sharded
    cache = tmp_path / "c"
    env = worker_env(local_hub.url, crew_home)
    with WorkerPool(DISPATCH, _holder_kwargs(cache, tmp_path), n=1, env=env, timeout=120) as holder:
        holder.wait_ready()
        holder.go()
        wait_until((tmp_path / "held").exists, what="the lock taken")
        holder_pid = int((tmp_path / "held").read_text().split()[0])
        prefetch_kwargs = {
            "action": "prefetch",
            "repo_id": SHARDED,
            "subfolders": [SUB],
            "cache_dir": str(cache),
            "env": {"HUB_PREFETCH_LOCK_TIMEOUT": "1"},
        }
        t0 = time.time()
        waiting = crew.run(prefetch_kwargs, timeout=60)
        assert [r.error_type for r in waiting] == ["LockTimeout"] * WORKERS, failures(waiting)
        assert all(str(holder_pid) in (r.error or "") for r in waiting), [r.error for r in waiting]
        assert all(1.0 <= r.t_end - t0 < 30 for r in waiting)
        assert sum(local_hub.counts().values()) == 0  # nobody went around the lock
        (tmp_path / "release").write_text("")
        assert holder.results(timeout=30)[0].ok
    results = crew.run(_load(cache), timeout=120)
    _assert_loaded(results, built)
    assert local_hub.bytes_served() == sum(needed.values())


# ------------------------------------------------------------------------------ the cache's environment

HF_MAJOR = int(huggingface_hub.__version__.split(".")[0])


@pytest.mark.skipif(HF_MAJOR < 2, reason="HF_HUB_DISABLE_SYMLINKS exists from huggingface_hub 2.x")
def test_symlinks_disabled_each_file_once_and_warm_after(local_hub, crew, sharded, tmp_path):
    built, needed = sharded
    cache = tmp_path / "c"
    no_links = {"HF_HUB_DISABLE_SYMLINKS": "1"}
    results = crew.run(_load(cache, env=no_links))
    _assert_loaded(results, built)
    for path in needed:
        assert local_hub.times_served(path) == 1, path
    snapshot = repo_dir(cache, SHARDED) / "snapshots" / built.commit
    assert all((snapshot / p).is_file() and not (snapshot / p).is_symlink() for p in needed)
    _assert_clean_cache(cache)
    local_hub.reset_log()
    again = crew.run(_load(cache, env=no_links))
    _assert_loaded(again, built)
    assert local_hub.counts()["get"] == 0


@pytest.fixture
def warm_read_only(local_hub, tmp_path):
    """A complete cache (warmed by hub-prefetch), then made read-only for everyone, root included."""
    cache = tmp_path / "ro"
    _warm(cache, local_hub)
    before = tree_state(cache)
    with read_only_view(cache) as mounted:
        if mounted:
            with pytest.raises(OSError):
                (cache / "probe").write_text("x")
        yield cache, before, mounted


def test_read_only_complete_cache_loads_with_zero_writes(local_hub, crew, sharded, warm_read_only):
    built, _needed = sharded
    cache, before, mounted = warm_read_only
    print(f"\nread-only by a bind mount: {mounted} (else: zero writes checked on the tree only)")
    results = crew.run(_load(cache))
    _assert_loaded(results, built)
    assert sum(local_hub.counts().values()) == 0
    assert tree_state(cache) == before


def test_read_only_complete_cache_after_the_revision_ttl_still_loads(
    local_hub, crew, sharded, warm_read_only
):
    cache, before, mounted = warm_read_only
    if not mounted:
        pytest.skip("needs a read-only mount")
    results = crew.run(
        {
            "action": "prefetch",
            "repo_id": SHARDED,
            "subfolders": [SUB],
            "cache_dir": str(cache),
            "env": {"HUB_PREFETCH_REVISION_TTL": "0"},
        }
    )
    assert not failures(results), failures(results)
    assert local_hub.counts()["get"] == 0
    assert tree_state(cache) == before


def test_offline_warm_cache_makes_zero_connections(local_hub, crew, sharded, tmp_path):
    built, _needed = sharded
    cache = tmp_path / "c"
    _warm(cache, local_hub)
    results = crew.run(_load(cache, env={"HF_HUB_OFFLINE": "1"}))
    _assert_loaded(results, built)
    assert local_hub.requests() == []


def test_offline_partial_cache_is_a_typed_error_at_once(local_hub, crew, sharded, tmp_path):
    cache = tmp_path / "c"
    snapshot = _warm(cache, local_hub)
    _dangle(snapshot)
    offline = {"HF_HUB_OFFLINE": "1"}
    t0 = time.time()
    results = crew.run(
        {
            "action": "prefetch",
            "repo_id": SHARDED,
            "subfolders": [SUB],
            "cache_dir": str(cache),
            "env": offline,
        }
    )
    assert [r.error_type for r in results] == ["OfflineCacheMissError"] * WORKERS, failures(results)
    assert all(SHARD2 in (r.error or "") for r in results)
    loads = crew.run(_load(cache, env=offline))
    assert not any(r.ok for r in loads)  # the loader's own error, raised once, no network
    assert all(r.t_end - t0 < 60 for r in loads)
    assert local_hub.requests() == []


@pytest.mark.parametrize("how", ["tmpfs", "injected-ENOSPC"])
def test_disk_full_during_a_download_is_a_clear_error_and_leaves_nothing_half_written(
    local_hub, crew, sharded, tmp_path, how
):
    """A size-limited tmpfs (root), or where mounting is not allowed an injected ENOSPC after the same
    number of body bytes: every worker fails with CacheWriteError at once, nothing half-written stays,
    and the next attempt with space succeeds."""
    built, needed = sharded
    cache = tmp_path / "small"
    budget = sum(needed.values()) // 2
    with contextlib.ExitStack() as stack:
        fault: dict = {}
        if how == "tmpfs":
            if not stack.enter_context(tmpfs(cache, f"{budget // 1024}k")):
                pytest.skip("cannot mount a size-limited tmpfs here (needs root); the injected case runs")
        else:
            fault = {"disk_budget": budget}
        prefetch = {"action": "prefetch", "repo_id": SHARDED, "subfolders": [SUB], "cache_dir": str(cache)}
        results = crew.run({**prefetch, **fault}, timeout=120)
        assert [r.error_type for r in results] == ["CacheWriteError"] * WORKERS, failures(results)
        assert all("No space left" in (r.error or "") for r in results), [r.error for r in results]
        # never retried: no file was asked for more than once per worker
        gets = [r.filename for r in local_hub.requests() if r.kind == "get"]
        assert all(gets.count(f) <= WORKERS for f in set(gets)), gets
        assert temp_files(cache) == []
        report = hub_prefetch.verify(SHARDED, [SUB], cache_dir=cache)
        assert {p.kind for p in report.problems} <= {"missing"}, str(report)  # absent, never half-written
        if how == "tmpfs":
            assert remount_size(cache, "64m")
        local_hub.reset_log()
        loads = crew.run(_load(cache))
        _assert_loaded(loads, built)
        _assert_clean_cache(cache)
