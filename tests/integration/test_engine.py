"""hub-prefetch's download engine against the local Hub, through the real huggingface_hub client for
the metadata, error mapping and the cache it leaves: one metadata request, no HEAD, every byte hashed,
resume, ranges, a mirror that lists nothing, and the layout huggingface_hub reads back offline."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download, scan_cache_dir, snapshot_download

import hub_prefetch
from hub_prefetch import errors
from hub_prefetch.cache import repo_folder
from hub_prefetch.engine import Engine
from hub_prefetch.engine.parts import read_record
from hub_prefetch.prefetch import Request, fetch_listing
from hub_prefetch.testing import LocalHub
from hub_prefetch.testing.pytest_plugin import GATED_TOKEN

SHARDED = "tiny/sharded-bert"
SUB = "text_encoder"
SHARD1 = f"{SUB}/model-00001-of-00003.safetensors"
SHARD2 = f"{SUB}/model-00002-of-00003.safetensors"


def _needed(hub_store, built, paths) -> dict[str, int]:
    files = hub_store.files(built.repo_id, built.commit)
    return {p: files[p].size for p in paths}


def _partials(cache: Path, repo_id: str = SHARDED) -> list[str]:
    folder = repo_folder(cache, "model", repo_id) / ".hub_prefetch" / "partial"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _gets(hub, filename: str) -> list:
    return [r for r in hub.requests() if r.kind == "get" and r.filename == filename]


def test_a_cold_cache_costs_one_metadata_request_no_head_and_one_get_per_file(
    local_hub, hub_store, built_repos, hf_cache
):
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    counts = local_hub.counts()
    assert (counts["revision"], counts["tree"], counts["head"], counts["other"]) == (1, 0, 0, 0)
    assert counts["get"] == len(result.files)
    assert local_hub.bytes_served() == result.bytes_total == result.bytes_downloaded
    assert result.unchecked == ()
    needed = _needed(hub_store, built_repos["sharded"], result.files)
    for path, size in needed.items():
        gets = _gets(local_hub, path)
        assert [(g.status, g.bytes_sent) for g in gets] == [(200, size)], path
    assert _partials(hf_cache) == []


def test_the_cache_is_huggingface_hubs_own_layout_offline_on_this_stack(local_hub, hf_cache, monkeypatch):
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    local_hub.reset_log()
    for path in result.files:
        got = hf_hub_download(
            SHARDED, path, revision=result.commit, cache_dir=hf_cache, local_files_only=True
        )
        assert Path(got) == Path(result.snapshot_path) / path
        assert os.path.islink(got) and not os.path.isabs(os.readlink(got))
    folder = snapshot_download(
        SHARDED,
        revision=result.commit,
        cache_dir=hf_cache,
        local_files_only=True,
        allow_patterns=[f"{SUB}/*"],
    )
    assert Path(folder) == Path(result.snapshot_path)
    report = scan_cache_dir(hf_cache)
    assert report.warnings == []
    (repo,) = report.repos
    assert repo.repo_id == SHARDED and repo.size_on_disk == result.bytes_total
    assert local_hub.counts()["get"] == 0


def test_a_flipped_byte_in_transit_is_caught_without_deep_mode_and_fetched_again(
    local_hub, hub_store, built_repos, hf_cache
):
    local_hub.corrupt(f"*/resolve/*/{SHARD2}", mode="flip", count=1)
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    assert not hub_prefetch.settings.Settings.from_env().deep_verify
    stored = hub_store.files(SHARDED, built_repos["sharded"].commit)[SHARD2]
    on_disk = (Path(result.snapshot_path) / SHARD2).read_bytes()
    assert hashlib.sha256(on_disk).hexdigest() == stored.sha256
    assert [g.fault for g in _gets(local_hub, SHARD2)] == ["flip", None]
    assert _partials(hf_cache) == []


def test_a_flipped_byte_twice_is_a_typed_error_naming_both_digests_and_nothing_is_published(
    local_hub, hub_store, built_repos, hf_cache
):
    local_hub.corrupt(f"*/resolve/*/{SHARD2}", mode="flip", count=2)
    stored = hub_store.files(SHARDED, built_repos["sharded"].commit)[SHARD2]
    with pytest.raises(errors.ChecksumMismatchError) as err:
        hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    e = err.value
    assert e.path == SHARD2 and e.expected == stored.sha256
    assert e.received and e.received != stored.sha256 and len(e.received) == 64
    assert isinstance(e, errors.IncompleteSnapshotError)
    snapshot = repo_folder(hf_cache, "model", SHARDED) / "snapshots" / built_repos["sharded"].commit
    assert not os.path.lexists(snapshot / SHARD2)
    assert not (repo_folder(hf_cache, "model", SHARDED) / "blobs" / stored.sha256).exists()
    assert _partials(hf_cache) == []
    assert len(_gets(local_hub, SHARD2)) == 2


def test_a_connection_cut_at_200_kB_resumes_with_a_range(local_hub, hub_store, built_repos, hf_cache):
    local_hub.drop_after(f"*/resolve/*/{SHARD1}", 200_000, count=1)
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    size = _needed(hub_store, built_repos["sharded"], [SHARD1])[SHARD1]
    gets = _gets(local_hub, SHARD1)
    assert [(g.range_start, g.bytes_sent) for g in gets] == [(None, 200_000), (200_000, size - 200_000)]
    assert local_hub.bytes_served() == result.bytes_total
    print(f"\ncut at 200 kB: bytes served / needed = {local_hub.bytes_served() / result.bytes_total:.4f}")


def test_a_large_file_comes_in_ranges_over_several_connections(
    local_hub, hub_store, built_repos, hf_cache, monkeypatch
):
    monkeypatch.setenv("HUB_PREFETCH_PART_SIZE", str(128 * 1024))
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    size = _needed(hub_store, built_repos["sharded"], [SHARD1])[SHARD1]
    gets = _gets(local_hub, SHARD1)
    assert len(gets) >= 4 and all(g.status == 206 for g in gets)
    covered = sorted((g.range_start, g.range_end) for g in gets)
    assert covered[0][0] == 0 and covered[-1][1] == size - 1
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(covered))
    assert local_hub.bytes_served() == result.bytes_total
    assert _partials(hf_cache) == []


def test_a_range_cut_mid_way_resumes_inside_its_range(
    local_hub, hub_store, built_repos, hf_cache, monkeypatch
):
    monkeypatch.setenv("HUB_PREFETCH_PART_SIZE", str(128 * 1024))
    local_hub.drop_after(f"*/resolve/*/{SHARD1}", 50_000, count=2)
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    assert local_hub.bytes_served() == result.bytes_total


def test_a_mirror_that_lists_names_only_is_described_by_its_tree_listing(local_hub, hf_cache):
    local_hub.set_listing_mode("bare-info")
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    assert result.unchecked == ()
    counts = local_hub.counts()
    assert (counts["revision"], counts["tree"], counts["head"]) == (1, 1, 0)
    report = hub_prefetch.verify(SHARDED, [SUB], cache_dir=hf_cache, deep=True)
    assert report.ok and report.unchecked == ()


def test_a_mirror_without_sizes_or_hashes_anywhere_never_reports_ok_for_what_it_did_not_check(
    local_hub, hf_cache
):
    """No info sizes, no tree API, no ETag: the lengths of the answers are all there is. The result,
    the stamp and `verify` say "size-checked only", never plain ok; the bytes are still all there."""
    local_hub.set_listing_mode("bare")
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    assert set(result.unchecked) == set(result.files)
    assert result.bytes_total == local_hub.bytes_served() > 0
    report = hub_prefetch.verify(SHARDED, [SUB], cache_dir=hf_cache, deep=True)
    assert set(report.unchecked) == set(result.files)
    assert "size-checked only" in str(report)
    warm = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    assert warm.warm and set(warm.unchecked) == set(result.files)


def test_redirects_to_the_cdn_are_followed_without_the_token(hub_store, built_repos, tmp_path, monkeypatch):
    gated = built_repos["gated"]
    with LocalHub(hub_store, redirect_lfs=True) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        result = hub_prefetch.prefetch(
            gated.repo_id, None, cache_dir=tmp_path, token=GATED_TOKEN, all_files=True
        )
        records = hub.requests()
    cdn = [r for r in records if r.kind == "get" and r.path.startswith("/_cdn/")]
    hub_side = [r for r in records if r.kind == "get" and not r.path.startswith("/_cdn/")]
    assert cdn and all(not r.auth for r in cdn)
    assert hub_side and all(r.auth for r in hub_side)
    assert not any(r.kind == "head" for r in records)
    assert result.bytes_downloaded == result.bytes_total


def test_ranges_follow_the_redirect_to_the_cdn(hub_store, tmp_path, monkeypatch):
    monkeypatch.setenv("HUB_PREFETCH_PART_SIZE", str(128 * 1024))
    with LocalHub(hub_store, redirect_lfs=True) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=tmp_path)
        records = hub.requests()
    ranged = [r for r in records if r.filename == SHARD1 and r.path.startswith("/_cdn/")]
    assert len(ranged) >= 4 and all(r.status == 206 and r.range_start is not None for r in ranged)
    assert sum(r.bytes_sent for r in records if r.kind == "get") == result.bytes_total


def test_the_huggingface_hub_engine_is_still_there(local_hub, hf_cache, monkeypatch):
    monkeypatch.setenv("HUB_PREFETCH_ENGINE", "huggingface_hub")
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    counts = local_hub.counts()
    assert counts["head"] == len(result.files) == counts["get"]
    assert hub_prefetch.verify(SHARDED, [SUB], cache_dir=hf_cache, deep=True).ok


def test_an_unknown_engine_is_a_typed_error(monkeypatch):
    monkeypatch.setenv("HUB_PREFETCH_ENGINE", "curl")
    with pytest.raises(errors.InvalidRequestError, match="HUB_PREFETCH_ENGINE"):
        hub_prefetch.prefetch(SHARDED, [SUB])


def test_a_partial_file_of_another_commit_is_pruned(local_hub, hf_cache):
    folder = repo_folder(hf_cache, "model", SHARDED) / ".hub_prefetch" / "partial"
    folder.mkdir(parents=True)
    (folder / ("f" * 64)).write_bytes(b"an old commit's file, half downloaded")
    (folder / ("f" * 64 + ".parts")).write_bytes(b"junk")
    hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    assert _partials(hf_cache) == []


def test_a_split_download_killed_mid_way_is_resumed_range_by_range(
    local_hub, hub_store, built_repos, hf_cache, hf_env
):
    """A holder downloading one file in ranges is SIGKILLed; the next one reads the ranges' record and
    asks only for what is not on disk: no byte the dead one wrote is served again."""
    size = _needed(hub_store, built_repos["sharded"], [SHARD1])[SHARD1]
    env = {
        **os.environ,
        **hf_env,
        "HUB_PREFETCH_PART_SIZE": str(64 * 1024),
        "HUB_PREFETCH_ENGINE": "hub_prefetch",
    }
    local_hub.set_bandwidth(300_000)
    code = f"import hub_prefetch; hub_prefetch.prefetch({SHARDED!r}, [{SUB!r}], cache_dir={str(hf_cache)!r})"
    victim = subprocess.Popen([sys.executable, "-c", code], env=env)
    stored = hub_store.files(SHARDED, built_repos["sharded"].commit)[SHARD1]
    record = repo_folder(hf_cache, "model", SHARDED) / ".hub_prefetch" / "partial" / f"{stored.sha256}.parts"
    try:
        deadline = time.monotonic() + 60
        while not (record.exists() and _record_done(record) > size // 3):
            assert victim.poll() is None and time.monotonic() < deadline, "never got a third of the way"
            time.sleep(0.02)
        victim.kill()
        victim.wait(30)
    finally:
        victim.kill()
    done = _record_done(record)
    local_hub.set_bandwidth(None)
    local_hub.reset_log()
    env_part = {"HUB_PREFETCH_PART_SIZE": str(64 * 1024)}
    os.environ.update(env_part)
    try:
        result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    finally:
        for k in env_part:
            del os.environ[k]
    assert local_hub.bytes_served(SHARD1) == size - done
    assert hashlib.sha256((Path(result.snapshot_path) / SHARD1).read_bytes()).hexdigest() == stored.sha256
    print(f"\nkilled at {done} of {size} bytes; the next holder fetched {size - done}")


def _record_done(record: Path) -> int:
    parts = read_record(record, size=int.from_bytes(record.read_bytes()[8:16], "little"))
    return sum(p.done for p in parts or [])


def test_two_holders_on_one_partial_file_both_end_with_the_published_blob(
    local_hub, hub_store, built_repos, hf_cache, caplog
):
    """The window a lease cannot close: a holder evicted mid-file and its successor write the same partial
    file. Forced here: A's GET is parked, B downloads and publishes the file, then A goes on. A's bytes are
    the same bytes, and its publish finds the file gone: it links the blob B published, verified."""
    caplog.set_level(logging.INFO, logger="hub_prefetch.engine")
    req = Request.build(SHARDED, [SUB], cache_dir=hf_cache)
    commit, listing = fetch_listing(req, "main")
    outcomes: dict[str, object] = {}
    with local_hub.hold(f"*/resolve/*/{SHARD2}") as hold:
        a = threading.Thread(
            target=lambda: outcomes.update(a=Engine(req, commit, listing, fence=lambda: None).fetch([SHARD2]))
        )
        a.start()
        hold.wait_arrived()
        outcomes["b"] = Engine(req, commit, listing, fence=lambda: None).fetch([SHARD2])
    a.join(60)
    assert set(outcomes) == {"a", "b"}
    stored = hub_store.files(SHARDED, built_repos["sharded"].commit)[SHARD2]
    target = req.snapshot(commit) / SHARD2
    assert hashlib.sha256(target.read_bytes()).hexdigest() == stored.sha256
    assert Path(os.path.realpath(target)).name == stored.sha256
    assert _partials(hf_cache) == []
    assert "was published by another holder" in caplog.text
