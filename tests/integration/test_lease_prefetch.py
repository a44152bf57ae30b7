"""Issue-13 cases through whole prefetches in real worker processes on the local Hub: one writer per
repo whatever the revision, downloads where ``flock`` raises on a filesystem reported as NFS, and an
evicted holder (its lease deleted mid-download) that stops publishing, waits, and still loads."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hub_prefetch
from hub_prefetch.testing import WorkerPool, run_workers

SHARDED = "tiny/sharded-bert"
SUB = "text_encoder"
HERE = Path(__file__).resolve().parent
TARGET = f"{Path(__file__).stem}:prefetch_on"

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def _flock_raising(code: int, fs_type: str | None) -> Iterator[None]:
    from hub_prefetch.lock import clear_probe_cache, probe

    def fake(fd: Any, operation: int) -> None:
        raise OSError(code, os.strerror(code))

    real_flock, real_type = fcntl.flock, probe.filesystem_type
    fcntl.flock = fake
    if fs_type is not None:
        probe.filesystem_type = lambda path: (fs_type, True)
    clear_probe_cache()
    try:
        yield
    finally:
        fcntl.flock, probe.filesystem_type = real_flock, real_type
        clear_probe_cache()


def prefetch_on(
    *, revision: str | None = None, flock_errno: str | None = None, fs_type: str | None = None
) -> dict[str, Any]:
    """Worker target: one prefetch, optionally where ``flock`` raises and the filesystem says NFS."""
    context = (
        _flock_raising(getattr(errno, flock_errno), fs_type) if flock_errno else contextlib.nullcontext()
    )
    evictions = _Count("stopped publishing")
    logging.getLogger("hub_prefetch.prefetch").addHandler(evictions)
    with context:
        result = hub_prefetch.prefetch(SHARDED, [SUB], revision=revision)
    return {**result.to_dict(), "pid": os.getpid(), "t_end": time.time(), "evictions": evictions.n}


class _Count(logging.Handler):
    """Counts the log lines that contain ``text`` (a holder noticing it lost the lock)."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text, self.n = text, 0

    def emit(self, record: logging.LogRecord) -> None:
        self.n += self.text in record.getMessage()


def _env(hf_env: dict[str, str], **extra: str) -> dict[str, str]:
    old = hf_env.get("PYTHONPATH") or os.environ.get("PYTHONPATH")
    return {**hf_env, "PYTHONPATH": os.pathsep.join([str(HERE), *([old] if old else [])]), **extra}


def _ok(results: Any) -> list[dict[str, Any]]:
    assert all(r.ok for r in results), [(r.error_type, r.error, r.stderr[-2000:]) for r in results]
    return [r.value for r in results]


def test_flock_raising_on_a_filesystem_reported_as_nfs_still_downloads(
    local_hub: Any, built_repos: Any, hf_env: dict[str, str], hf_cache: Path
) -> None:
    """The probe used to throw the flock test away on a network filesystem, so huggingface_hub's per-blob
    locks were never switched off there, and every download failed or spun on ENOLCK."""
    values = _ok(
        run_workers(TARGET, {"flock_errno": "ENOLCK", "fs_type": "nfs4"}, n=2, env=_env(hf_env), timeout=90)
    )
    assert {v["commit"] for v in values} == {built_repos["sharded"].commit}
    assert sum(bool(v["downloaded"]) for v in values) == 1
    assert hub_prefetch.verify(SHARDED, [SUB], cache_dir=hf_cache, deep=True).ok


@pytest.mark.parametrize("flock_errno", [None, "ENOLCK"], ids=["flock", "flock-raises"])
def test_a_commit_pinned_and_a_branch_load_of_one_repo_download_once(
    local_hub: Any, built_repos: Any, hf_env: dict[str, str], hf_cache: Path, flock_errno: str | None
) -> None:
    """``install()`` with a pipeline in one worker and a component in another: one pinned to the commit,
    one on ``main``. One repo, one writer: each file comes from the Hub once."""
    commit = built_repos["sharded"].commit
    local_hub.set_bandwidth(2_000_000.0)  # long enough that the two would overlap if both wrote
    kwargs = [
        {"revision": commit, "flock_errno": flock_errno},
        {"revision": "main", "flock_errno": flock_errno},
    ]
    values = _ok(run_workers(TARGET, kwargs, n=2, env=_env(hf_env, HUB_PREFETCH_LOCK="lease"), timeout=90))
    assert {v["commit"] for v in values} == {commit}
    for path in built_repos["sharded"].files:
        if path.startswith(f"{SUB}/"):
            assert local_hub.times_served(path) == 1, path
    assert sum(bool(v["downloaded"]) for v in values) == 1
    assert hub_prefetch.verify(SHARDED, [SUB], cache_dir=hf_cache, deep=True).ok


def test_an_evicted_holder_stops_publishing_waits_and_still_loads(
    local_hub: Any, built_repos: Any, hf_env: dict[str, str], hf_cache: Path
) -> None:
    """An operator deletes the lease while its holder downloads; a second process takes the lock. The
    first notices at its next fenced step, stops, waits, and returns the second one's verified snapshot."""
    local_hub.set_bandwidth(1_000_000.0)
    env = _env(hf_env, HUB_PREFETCH_LOCK="lease", HUB_PREFETCH_LEASE_TTL="30")
    with (
        WorkerPool(TARGET, {}, n=1, env=env, timeout=90) as first,
        WorkerPool(TARGET, {}, n=1, env=env) as second,
    ):
        first.wait_ready()
        second.wait_ready()
        first.go()
        deadline = time.monotonic() + 30
        while not any(r.kind == "get" and r.bytes_sent > 0 for r in local_hub.requests()):
            assert time.monotonic() < deadline, "the first prefetch never started downloading"
            time.sleep(0.01)
        (lease,) = (hf_cache / ".locks" / "hub_prefetch").glob("*.lease")
        lease.unlink()  # the operator
        second.go()
        (a,) = _ok(first.results())
        (b,) = _ok(second.results())
    assert a["commit"] == b["commit"] == built_repos["sharded"].commit
    assert hub_prefetch.verify(SHARDED, [SUB], cache_dir=hf_cache, deep=True).ok
    needed, served = b["bytes_total"], local_hub.bytes_served()
    print(f"\n[evicted holder] bytes served / needed = {served / needed:.2f} ({served} / {needed})")
    # The first noticed at its next fenced step, stopped and waited again; one of the two then finished
    # the download (the first itself, when it got the lock back before the second asked) and the other
    # returned its verified stamp.
    assert a["evictions"] >= 1 and b["evictions"] == 0, (a, b)
    assert sorted([a["warm"], b["warm"]]) == [False, True], (a, b)
    assert served < 2 * needed
