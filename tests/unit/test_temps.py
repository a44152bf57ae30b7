"""Temp-file age without cross-machine clocks: a file is an orphan only once this host has seen it
unchanged for ``min_age_s`` of its own monotonic clock, whatever mtime another host's clock gave it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hub_prefetch.cache import blobs_dir
from hub_prefetch.verify import clean_orphan_temps

REPO = "org/model"
DAY = 86_400


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def blobs(tmp_path: Path) -> Path:
    folder = blobs_dir(tmp_path, "model", REPO)
    folder.mkdir(parents=True)
    return folder


def _temp(blobs: Path, name: str, *, mtime_offset: float) -> Path:
    path = blobs / f"{name}.incomplete"
    path.write_bytes(b"x" * 10)
    stamp = time.time() + mtime_offset
    os.utime(path, (stamp, stamp))
    return path


def _grow(path: Path, *, mtime_offset: float) -> None:
    with open(path, "ab") as fh:
        fh.write(b"y" * 10)
    stamp = time.time() + mtime_offset
    os.utime(path, (stamp, stamp))


@pytest.mark.parametrize("skew", [-DAY, +DAY], ids=["writer-clock-a-day-behind", "writer-clock-a-day-ahead"])
def test_a_growing_file_is_never_removed_and_a_dead_one_after_two_looks(blobs: Path, skew: float) -> None:
    cache = blobs.parent.parent
    clock = Clock()
    live = _temp(blobs, "live", mtime_offset=skew)
    dead = _temp(blobs, "dead", mtime_offset=skew)

    def look() -> list[Path]:
        return clean_orphan_temps(cache, "model", REPO, min_age_s=30, clock=clock)

    assert look() == []  # first sighting of both: no age is known yet, whatever the mtimes say
    for round_ in range(3):
        clock.now += 3600
        _grow(live, mtime_offset=skew)  # the writer is alive: each look sees a new size
        assert look() == ([dead] if round_ == 0 else [])  # the dead one at the second look
        assert live.exists()
    assert not dead.exists()


def test_a_dead_file_is_kept_until_quiet_for_min_age(blobs: Path) -> None:
    cache = blobs.parent.parent
    clock = Clock()
    dead = _temp(blobs, "dead", mtime_offset=-DAY)  # old by mtime: the old age guard removed it at once
    assert clean_orphan_temps(cache, "model", REPO, min_age_s=30, clock=clock) == []
    clock.now += 29
    assert clean_orphan_temps(cache, "model", REPO, min_age_s=30, clock=clock) == []
    clock.now += 1
    assert clean_orphan_temps(cache, "model", REPO, min_age_s=30, clock=clock) == [dead]
    # The sightings record forgets what is gone.
    record = blobs.parent / ".hub_prefetch" / "temp-sightings.json"
    assert not record.exists()


def test_a_replaced_file_of_the_same_name_starts_over(blobs: Path) -> None:
    cache = blobs.parent.parent
    clock = Clock()
    first = _temp(blobs, "t", mtime_offset=0)
    assert clean_orphan_temps(cache, "model", REPO, min_age_s=30, clock=clock) == []
    first.unlink()
    second = _temp(blobs, "t", mtime_offset=0)  # a new writer: a new inode (and size/mtime on the way)
    os.utime(second, ns=(0, os.stat(second).st_mtime_ns + 1))
    clock.now += 60
    assert clean_orphan_temps(cache, "model", REPO, min_age_s=30, clock=clock) == []
    assert second.exists()


def test_without_min_age_a_free_blob_lock_is_enough(blobs: Path) -> None:
    cache = blobs.parent.parent
    dead = _temp(blobs, "dead", mtime_offset=+DAY)
    assert clean_orphan_temps(cache, "model", REPO) == [dead]
    assert not (blobs.parent / ".hub_prefetch").exists()  # no record written on this path


def test_after_a_dead_holder_the_first_look_is_enough_but_a_locked_blob_stays(blobs: Path) -> None:
    """The writer's lease is the evidence: a lease taken over from a dead holder means its temp files have
    no writer; one whose blob lock a live local process holds is still left alone."""
    from filelock import FileLock

    cache = blobs.parent.parent
    dead = _temp(blobs, "dead", mtime_offset=+DAY)
    live = _temp(blobs, "live", mtime_offset=-DAY)
    locks = cache / ".locks" / blobs.parent.name
    locks.mkdir(parents=True)
    with FileLock(str(locks / "live.lock")):
        removed = clean_orphan_temps(cache, "model", REPO, min_age_s=30, writers_gone=True, clock=Clock())
    assert removed == [dead] and live.exists()
