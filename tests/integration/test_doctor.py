"""``hub-prefetch doctor``: the checks on a healthy disk, on a folder where ``flock`` is a no-op or
raises on a filesystem reported as NFS, with live and stale leases, orphan temp files, and a problem."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub_prefetch import cli, doctor
from hub_prefetch.cache import lock_dir
from hub_prefetch.lock import HolderInfo, RepoLock, clear_probe_cache, probe
from hub_prefetch.lock.identity import encode_record


def run(cache: Path) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = cli.main(["doctor", "--cache-dir", str(cache), "--json"], out=out, err=io.StringIO())
    return code, json.loads(out.getvalue())


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


@contextlib.contextmanager
def flock_as(mode: str, *, fs: tuple[str, bool] | None = None) -> Iterator[None]:
    """``fcntl.flock`` a no-op or raising ``mode``; optionally the filesystem type reported as ``fs``."""
    real, real_type = fcntl.flock, probe.filesystem_type

    def fake(fd: Any, operation: int) -> None:
        if mode != "noop":
            code = getattr(errno, mode)
            raise OSError(code, os.strerror(code))

    fcntl.flock = fake
    if fs is not None:
        probe.filesystem_type = lambda path: fs
    clear_probe_cache()
    try:
        yield
    finally:
        fcntl.flock, probe.filesystem_type = real, real_type
        clear_probe_cache()


def test_a_healthy_local_disk(tmp_path: Path) -> None:
    code, report = run(tmp_path)
    checks = by_name(report)
    assert code == 0 and report["ok"]
    assert checks["flock"]["facts"] == {"works": True, "excludes": True, "error": None}
    assert checks["backend"]["facts"]["backend"] == "flock"
    assert checks["o_excl"]["status"] == "ok" and checks["link"]["status"] == "ok"
    assert checks["free_space"]["facts"]["free_bytes"] > 0
    assert checks["clock"]["status"] == "ok" and abs(checks["clock"]["facts"]["skew_s"]) < 1
    assert not [p for p in lock_dir(tmp_path).iterdir() if p.name.startswith(".doctor-")]  # probes removed


def test_a_no_op_flock_picks_the_lease_and_says_why(tmp_path: Path) -> None:
    with flock_as("noop"):
        code, report = run(tmp_path)
    checks = by_name(report)
    assert code == 0  # handled: the lease takes over
    assert checks["flock"]["status"] == "warn" and "no-op" in checks["flock"]["summary"]
    assert checks["backend"]["facts"]["backend"] == "lease"


def test_flock_raising_on_nfs_is_reported_and_the_lease_switches_blob_locks_off(tmp_path: Path) -> None:
    with flock_as("ENOLCK", fs=("nfs4", True)):
        code, report = run(tmp_path)
    checks = by_name(report)
    assert code == 0
    assert checks["filesystem"]["facts"] == {"fs_type": "nfs4", "network_fs": True}
    assert checks["flock"]["facts"]["error"] == "ENOLCK" and "per-blob" in checks["flock"]["summary"]
    assert checks["backend"]["facts"]["backend"] == "lease"


def test_locks_stale_leases_and_orphan_temp_files_are_listed(tmp_path: Path) -> None:
    live = RepoLock(tmp_path, "org/live", backend="lease", lease_ttl=30)
    with live:
        folder = lock_dir(tmp_path)
        stale = HolderInfo(
            host="gone",
            pid=1,
            start_time=None,
            token="0" * 32,
            acquired_at=1.0,
            heartbeat_at=1.0,
            backend="lease",
            repo_id="org/dead",
            ttl=1.0,
            boot_id="another-machine",
        )
        (folder / "deadbeef.lease").write_bytes(encode_record(stale))
        blobs = tmp_path / "models--org--live" / "blobs"
        blobs.mkdir(parents=True)
        (blobs / "abc.incomplete").write_bytes(b"x" * 10)
        code, report = run(tmp_path)
    checks = by_name(report)
    assert code == 0
    rows = {r["repo_id"]: r for r in checks["locks"]["facts"]["locks"]}
    assert not rows["org/live"]["stale"] and rows["org/live"]["holder"].endswith(f":{os.getpid()}")
    assert rows["org/dead"]["stale"]
    assert checks["locks"]["status"] == "warn" and "1 held, 1 stale" in checks["locks"]["summary"]
    assert checks["temp_files"]["facts"]["temp_files"][0]["bytes"] == 10


def test_a_problem_exits_1_with_a_human_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "MIN_FREE_BYTES", 1 << 62)
    out = io.StringIO()
    code = cli.main(["doctor", "--cache-dir", str(tmp_path)], out=out, err=io.StringIO())
    text = out.getvalue()
    assert code == 1
    assert "PROBLEM free_space" in text and "1 problem(s)" in text


def test_an_unwritable_cache_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / ".locks").write_text("a file where the lock folder should be")
    code, report = run(tmp_path)
    assert code == 1 and by_name(report)["cache"]["status"] == "problem"
