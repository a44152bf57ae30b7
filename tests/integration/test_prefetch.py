"""Verified prefetch on the local Hub: one download per cache, zero-request warm path, per-file repair,
one commit for everybody, offline behaviour and bad input."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest
from filelock import FileLock

import hub_prefetch
from hub_prefetch import errors
from hub_prefetch.cache import repo_folder
from hub_prefetch.testing import run_workers
from hub_prefetch.testing.repos import tensor_fingerprint

SHARDED = "tiny/sharded-bert"
SUB = "text_encoder"
SHARD2 = f"{SUB}/model-00002-of-00003.safetensors"
PREFETCH = "hub_prefetch.testing.protected_targets:prefetch_only"


def _metadata_requests(hub) -> int:
    counts = hub.counts()
    return counts["revision"] + counts["tree"] + counts["other"]


def _tree_state(root: Path) -> dict[str, tuple[int, int, int]]:
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            state[os.path.relpath(os.path.join(dirpath, name), root)] = (
                st.st_mtime_ns,
                st.st_size,
                st.st_mode,
            )
    return state


@pytest.fixture
def warm(local_hub, hf_cache):
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    local_hub.reset_log()
    return result


def test_cold_cache_8_processes_each_file_served_once_then_warm_round_costs_nothing(
    local_hub, built_repos, hf_env, hf_cache
):
    results = run_workers(PREFETCH, {"repo_id": SHARDED, "subfolders": [SUB]}, n=8, env=hf_env, timeout=120)
    assert all(r.ok for r in results), [(r.error_type, r.error) for r in results]
    values = [r.value for r in results]
    assert {v["commit"] for v in values} == {built_repos["sharded"].commit}
    files = values[0]["files"]
    assert set(built_repos["sharded"].files) >= {f for f in files if f.startswith(SUB)}
    for f in files:
        assert local_hub.times_served(f) == 1, f
    assert _metadata_requests(local_hub) <= 3
    assert sum(bool(v["downloaded"]) for v in values) == 1
    report = hub_prefetch.verify(SHARDED, [SUB], cache_dir=hf_cache, deep=True)
    assert report.ok, str(report)

    local_hub.reset_log()
    again = run_workers(PREFETCH, {"repo_id": SHARDED, "subfolders": [SUB]}, n=8, env=hf_env, timeout=120)
    assert all(r.ok and r.value["warm"] for r in again), [(r.error_type, r.error) for r in again]
    assert sum(local_hub.counts().values()) == 0


def test_warm_path_by_commit_hash_is_also_free(local_hub, warm, hf_cache):
    result = hub_prefetch.prefetch(SHARDED, [SUB], revision=warm.commit, cache_dir=hf_cache)
    assert result.warm and result.commit == warm.commit
    assert sum(local_hub.counts().values()) == 0


def test_branch_is_rechecked_after_the_freshness_window(local_hub, warm, hf_cache, monkeypatch):
    monkeypatch.setenv("HUB_PREFETCH_REVISION_TTL", "0")
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    assert result.commit == warm.commit
    assert local_hub.counts()["revision"] == 1
    assert local_hub.counts()["get"] == 0


def _assert_nothing_asked_twice(hub) -> None:
    seen = [(r.method, r.path) for r in hub.requests()]
    assert seen and len(seen) == len(set(seen)), seen
    assert hub.counts()["revision"] <= 1


def _blob_of(snapshot: Path, path: str) -> Path:
    return (snapshot / path).resolve()


def test_deleted_blob_is_reported_dangling_and_only_it_is_refetched(local_hub, warm, hf_cache):
    _blob_of(Path(warm.snapshot_path), SHARD2).unlink()
    report = hub_prefetch.verify(SHARDED, [SUB], cache_dir=hf_cache)
    assert [(p.path, p.kind) for p in report.problems] == [(SHARD2, "dangling")]
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    assert result.downloaded == (SHARD2,)
    assert local_hub.counts()["get"] == 1 and local_hub.times_served(SHARD2) == 1
    assert hub_prefetch.verify(SHARDED, [SUB], cache_dir=hf_cache, deep=True).ok


def test_truncated_shard_is_detected_by_size_and_refetched(local_hub, warm, hf_cache):
    blob = _blob_of(Path(warm.snapshot_path), SHARD2)
    size = blob.stat().st_size
    os.truncate(blob, size // 2)
    report = hub_prefetch.verify(SHARDED, [SUB], cache_dir=hf_cache)
    assert [(p.path, p.kind) for p in report.problems] == [(SHARD2, "size")]
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    assert SHARD2 in result.downloaded and len(result.downloaded) == 1
    assert _blob_of(Path(warm.snapshot_path), SHARD2).stat().st_size == size
    assert local_hub.counts()["get"] == 1


def test_flipped_byte_is_caught_only_by_deep_verify_and_repaired(local_hub, warm, hf_cache, built_repos):
    blob = _blob_of(Path(warm.snapshot_path), SHARD2)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert hub_prefetch.verify(SHARDED, [SUB], cache_dir=hf_cache).ok  # same size: cheap check passes
    deep = hub_prefetch.verify(SHARDED, [SUB], cache_dir=hf_cache, deep=True)
    assert [(p.path, p.kind) for p in deep.problems] == [(SHARD2, "hash")]
    result = hub_prefetch.repair(SHARDED, [SUB], cache_dir=hf_cache)
    assert result.repaired == (SHARD2,)
    assert local_hub.times_served(SHARD2) == 1 and local_hub.counts()["get"] == 1
    assert hub_prefetch.verify(SHARDED, [SUB], cache_dir=hf_cache, deep=True).ok


def test_missing_config_beside_weights_is_refetched_alone(local_hub, warm, hf_cache):
    (Path(warm.snapshot_path) / SUB / "config.json").unlink()
    report = hub_prefetch.verify(SHARDED, [SUB], cache_dir=hf_cache)
    assert [(p.path, p.kind) for p in report.problems] == [(f"{SUB}/config.json", "missing")]
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    # the blob is still there: the link is recreated after one HEAD, without a body download
    assert result.downloaded == (f"{SUB}/config.json",)
    assert local_hub.counts()["get"] <= 1
    assert (Path(warm.snapshot_path) / SUB / "config.json").is_file()


def test_orphan_temp_of_dead_writer_is_removed_live_writers_is_kept(local_hub, warm, hf_cache):
    folder = repo_folder(hf_cache, "model", SHARDED)
    orphan = folder / "blobs" / ("a" * 64 + ".incomplete")
    live = folder / "blobs" / ("b" * 64 + ".0123abcd.incomplete")
    orphan.write_bytes(b"x" * 100)
    live.write_bytes(b"y" * 100)
    lock_dir = hf_cache / ".locks" / folder.name
    lock_dir.mkdir(parents=True, exist_ok=True)
    held = threading.Event()
    done = threading.Event()

    def live_writer():
        with FileLock(str(lock_dir / ("b" * 64 + ".lock"))):
            held.set()
            done.wait(30)

    t = threading.Thread(target=live_writer)
    t.start()
    try:
        assert held.wait(10)
        hub_prefetch.repair(SHARDED, [SUB], cache_dir=hf_cache, deep=False)
        assert not orphan.exists()
        assert live.exists()
    finally:
        done.set()
        t.join()


def test_one_commit_for_everybody_while_the_branch_moves(local_hub, hub_store, hf_env, hf_cache, built_repos):
    repo = "tiny/moving"
    src = built_repos["sharded"]
    files = {p: hub_store.read(SHARDED, src.commit, p) for p in src.files}
    first = hub_store.commit(repo, files, message="weights")
    hold = local_hub.hold(f"*/resolve/*/{SUB}/model-00003-of-00003.safetensors")
    with hold:
        from hub_prefetch.testing import WorkerPool

        with WorkerPool(PREFETCH, {"repo_id": repo, "subfolders": [SUB]}, n=4, env=hf_env) as pool:
            pool.go()
            hold.wait_arrived(1, timeout=60)
            moved = hub_store.commit(repo, {f"{SUB}/extra.txt": b"new"}, message="move main")
            hold.release()
            results = pool.results(timeout=120)
    assert moved != first
    assert all(r.ok for r in results), [(r.error_type, r.error) for r in results]
    assert {r.value["commit"] for r in results} == {first}


def test_offline_warm_makes_no_request_and_partial_raises_typed(local_hub, warm, hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache).warm
    _blob_of(Path(warm.snapshot_path), SHARD2).unlink()
    with pytest.raises(errors.OfflineCacheMissError) as info:
        hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    assert SHARD2 in str(info.value)
    assert hub_prefetch.prefetch_subfolders(SHARDED, [SUB], cache_dir=hf_cache) is None  # best-effort
    assert sum(local_hub.counts().values()) == 0


def test_offline_cold_cache_raises_at_once(local_hub, hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(errors.OfflineCacheMissError):
        hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    assert sum(local_hub.counts().values()) == 0


def test_complete_cache_loads_with_zero_writes(local_hub, warm, hf_cache):
    before = _tree_state(hf_cache)
    for _ in range(3):
        assert hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache).warm
    assert _tree_state(hf_cache) == before
    assert sum(local_hub.counts().values()) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model": "../x", "subfolders": [SUB]},
        {"model": "/etc/passwd-repo", "subfolders": [SUB]},
        {"model": "a" * 200, "subfolders": [SUB]},
        {"model": SHARDED, "subfolders": ["../../etc"]},
        {"model": SHARDED, "subfolders": [SUB], "revision": "../../main"},
    ],
)
def test_path_like_input_is_refused_before_any_request_or_write(local_hub, hf_cache, kwargs):
    with pytest.raises(errors.InvalidRequestError):
        hub_prefetch.prefetch(cache_dir=hf_cache, **kwargs)
    with pytest.raises(errors.InvalidRequestError):
        hub_prefetch.prefetch_subfolders(cache_dir=hf_cache, **kwargs)
    assert sum(local_hub.counts().values()) == 0
    assert list(hf_cache.iterdir()) == []


def test_unknown_subfolder_is_one_request_and_a_typed_error(local_hub, hf_cache):
    with pytest.raises(errors.UnknownSubfolderError) as info:
        hub_prefetch.prefetch(SHARDED, ["no_such_part"], cache_dir=hf_cache)
    assert info.value.subfolders == ("no_such_part",)
    assert local_hub.counts() == {"revision": 1, "tree": 0, "head": 0, "get": 0, "other": 0}


@pytest.mark.parametrize(
    "model,revision,expected",
    [
        ("tiny/does-not-exist", None, errors.RepoNotFound),
        (SHARDED, "no-such-branch", errors.RevisionNotFound),
        ("tiny/gated", None, errors.GatedRepoError),
    ],
)
def test_hub_refusals_surface_at_once_without_retries(local_hub, hf_cache, model, revision, expected, caplog):
    with pytest.raises(expected):
        hub_prefetch.prefetch(model, [""], revision=revision, cache_dir=hf_cache)
    _assert_nothing_asked_twice(local_hub)
    local_hub.reset_log()
    with caplog.at_level(logging.WARNING, logger="hub_prefetch"):
        assert hub_prefetch.prefetch_subfolders(model, [""], revision=revision, cache_dir=hf_cache) is None
    _assert_nothing_asked_twice(local_hub)
    assert len([r for r in caplog.records if r.name.startswith("hub_prefetch")]) <= 1


def test_gated_repo_with_token(local_hub, hf_cache, built_repos):
    result = hub_prefetch.prefetch("tiny/gated", [""], cache_dir=hf_cache, token="hf_secret")
    assert result.files and result.commit == built_repos["gated"].commit


def test_transient_503_on_a_shard_is_retried_within_bounds(local_hub, hf_cache, monkeypatch):
    monkeypatch.setenv("HUB_PREFETCH_BACKOFF", "0.01")
    local_hub.fail(f"*/resolve/*/{SHARD2}", method="GET", status=503, count=2)
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    assert SHARD2 in result.downloaded
    assert hub_prefetch.verify(SHARDED, [SUB], cache_dir=hf_cache, deep=True).ok


def test_429_retry_after_is_honoured(local_hub, hf_cache, monkeypatch):
    monkeypatch.setenv("HUB_PREFETCH_BACKOFF", "0.01")
    local_hub.fail("/api/models/*", method="GET", status=429, count=1, retry_after=1)
    import time

    t0 = time.monotonic()
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    assert time.monotonic() - t0 >= 1.0  # a lower bound on a mandated wait is not a race
    assert result.files and local_hub.counts()["revision"] == 2


def test_exact_selection_saves_bytes_against_the_reference_patterns(
    local_hub, hub_store, built_repos, hf_cache
):
    from hub_prefetch.select import reference_selection

    repo = built_repos["variants"]
    listing = hub_store.files(repo.repo_id, repo.commit)
    sub = repo.subfolder
    result = hub_prefetch.prefetch(repo.repo_id, [sub], cache_dir=hf_cache)
    ref = reference_selection(listing, [sub])
    ours = sum(listing[f].size for f in result.files)
    theirs = sum(listing[f].size for f in ref)
    print(f"\nexact selection: {ours} bytes vs reference patterns {theirs} bytes ({theirs / ours:.2f}x)")
    assert ours < theirs
    assert not any(f.endswith(".bin") for f in result.files)


def test_pipeline_prefetch_takes_model_index_components(local_hub, built_repos, hf_cache):
    result = hub_prefetch.prefetch_pipeline("tiny/sd-pipe", cache_dir=hf_cache)
    subfolders = {f.split("/")[0] for f in result.files if "/" in f}
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= subfolders
    assert "model_index.json" in result.files
    with pytest.raises(errors.UnknownSubfolderError):
        hub_prefetch.prefetch_pipeline("tiny/sd-pipe", ["nope"], cache_dir=hf_cache)


def test_loads_the_real_weights_from_the_verified_snapshot(local_hub, built_repos, hf_cache):
    from transformers import AutoModel

    model = hub_prefetch.from_pretrained_with_prefetch(
        AutoModel.from_pretrained, SHARDED, subfolder=SUB, prefetch_list=[SUB], cache_dir=str(hf_cache)
    )
    assert tensor_fingerprint(model) == built_repos["sharded"].fingerprint
    assert model.name_or_path == SHARDED


def test_revision_record_is_renewed_only_by_a_real_hub_answer(local_hub, warm, hf_cache):
    from hub_prefetch.cache import listing_path, read_json, revision_record_path

    record = revision_record_path(hf_cache, "model", SHARDED, "main")
    before = read_json(record)
    assert before is not None
    resolved_at = before["resolved_at"]
    # A new selection and a repair under a fresh record: neither asks the Hub about `main`...
    listing_path(hf_cache, "model", SHARDED, warm.commit).unlink()
    hub_prefetch.prefetch(SHARDED, ["tokenizer"], cache_dir=hf_cache)
    hub_prefetch.repair(SHARDED, [SUB], cache_dir=hf_cache)
    assert local_hub.counts()["revision"] == 1  # the missing listing, fetched by commit
    assert [r.revision for r in local_hub.requests() if r.kind == "revision"] == [warm.commit]
    # ... so neither may pretend it did: a branch that moved is still noticed when the record expires.
    after = read_json(record)
    assert after is not None and after["resolved_at"] == resolved_at
