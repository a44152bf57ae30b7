"""A damaged local file is this cache's problem, not the repo's: a zero-filled ``*.index.json`` (a crash
mid-write) is re-fetched by prefetch and repair, reported by verify, and offline it is a cache miss;
corrupt or foreign side files read as absent."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import hub_prefetch
from hub_prefetch import cache, errors

SHARDED = "tiny/sharded-bert"
SUB = "text_encoder"
INDEX = f"{SUB}/model.safetensors.index.json"


def _zero_fill(path: Path) -> bytes:
    """Overwrite the blob behind a snapshot entry with zeros of the same size; return the old bytes."""
    blob = Path(os.path.realpath(path))
    old = blob.read_bytes()
    blob.write_bytes(b"\0" * len(old))
    return old


def _side_dir(hf_cache: Path) -> Path:
    return cache.repo_folder(hf_cache, "model", SHARDED) / ".hub_prefetch"


@pytest.fixture
def warm(local_hub: Any, hf_cache: Path) -> hub_prefetch.PrefetchResult:
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    local_hub.reset_log()
    return result


def test_zero_filled_index_is_fetched_again_not_blamed_on_the_repo(
    local_hub: Any, warm: hub_prefetch.PrefetchResult, hf_cache: Path
) -> None:
    index = Path(warm.snapshot_path) / INDEX
    good = _zero_fill(index)
    shutil.rmtree(_side_dir(hf_cache) / "stamps")  # the crash came before any stamp
    report = hub_prefetch.verify(SHARDED, [SUB], cache_dir=hf_cache)
    assert [(p.path, p.kind) for p in report.problems] == [(INDEX, "hash")], str(report)
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    assert index.read_bytes() == good
    assert local_hub.times_served(INDEX) == 1
    assert set(result.files) == set(warm.files)
    assert hub_prefetch.verify(SHARDED, [SUB], cache_dir=hf_cache, deep=True).ok


def test_repair_fixes_a_zero_filled_index_under_a_stamp(
    local_hub: Any, warm: hub_prefetch.PrefetchResult, hf_cache: Path
) -> None:
    index = Path(warm.snapshot_path) / INDEX
    good = _zero_fill(index)
    result = hub_prefetch.repair(SHARDED, [SUB], cache_dir=hf_cache)
    assert index.read_bytes() == good
    assert INDEX in set(result.downloaded) | set(result.repaired)
    assert local_hub.times_served(INDEX) == 1


def test_offline_a_zero_filled_index_is_a_cache_miss(
    local_hub: Any, warm: hub_prefetch.PrefetchResult, hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _zero_fill(Path(warm.snapshot_path) / INDEX)
    shutil.rmtree(_side_dir(hf_cache) / "stamps")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(errors.OfflineCacheMissError) as info:
        hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    assert info.value.missing == (INDEX,)
    assert sum(local_hub.counts().values()) == 0


@pytest.mark.parametrize(
    "folder,content",
    [
        ("stamps", b"\0" * 64),
        ("stamps", json.dumps({"version": 1, "commit": "{commit}", "files": {"x": "big"}}).encode()),
        ("listings", json.dumps({"version": 1, "commit": "{commit}", "files": {INDEX: 7}}).encode()),
        (
            "revisions",
            json.dumps({"version": 1, "revision": "main", "commit": "{commit}", "resolved_at": "?"}).encode(),
        ),
    ],
    ids=["zero-filled-stamp", "foreign-stamp", "foreign-listing", "foreign-record"],
)
def test_corrupt_or_foreign_side_files_read_as_absent(
    local_hub: Any, warm: hub_prefetch.PrefetchResult, hf_cache: Path, folder: str, content: bytes
) -> None:
    files = [p for p in (_side_dir(hf_cache) / folder).rglob("*.json")]
    assert files
    for path in files:
        path.write_bytes(content.replace(b"{commit}", warm.commit.encode()))
    if folder != "stamps":
        shutil.rmtree(_side_dir(hf_cache) / "stamps")  # so the flow reads the damaged file
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    assert result.commit == warm.commit and set(result.files) == set(warm.files)
    assert local_hub.counts()["get"] == 0  # the blobs were whole: nothing re-downloaded
    assert hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache).warm
