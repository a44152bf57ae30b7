"""``hub-prefetch doctor``: what a user runs when loads hang or a cluster shares a cache.

It probes the cache's filesystem as the lock does (:func:`~hub_prefetch.lock.probe_filesystem`), tests
the two atomic operations the lease rests on (``O_CREAT|O_EXCL`` and ``link()``), reads the folder's
sharing bits and free space, compares this host's clock with the filesystem's (a new file's mtime is
stamped by the file server on NFS) and with the lease files' heartbeats, lists every lock with its
holder, and finds orphan temp files. Each finding is a :class:`Check` whose ``status`` is ``ok``,
``warn`` (worth knowing, handled by hub-prefetch) or ``problem`` (loads will fail or hang, or a lock
cannot be trusted). Nothing is changed but the probe files it creates and removes (and the lock folder,
created if missing).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import cache
from .errors import CacheWriteError
from .lock import FsProbe, list_locks, probe_filesystem
from .settings import Settings

__all__ = ["Check", "DoctorReport", "diagnose"]

Status = Literal["ok", "warn", "problem"]
#: Below this much free space a large model's download fails part-way.
MIN_FREE_BYTES = 1 << 30
#: More clock skew than this between this host and the file server misleads age-based judgements.
MAX_SKEW_S = 5.0


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, how it came out, and the facts behind it."""

    name: str
    status: Status
    summary: str
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DoctorReport:
    """Every check of one cache; ``ok`` unless a check found a problem."""

    cache_dir: str
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.status != "problem" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"cache_dir": self.cache_dir, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}

    def __str__(self) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = [f"hub-prefetch doctor: {self.cache_dir}"]
        lines += [f"  {c.status.upper():7s} {c.name.ljust(width)}  {c.summary}" for c in self.checks]
        problems = sum(c.status == "problem" for c in self.checks)
        warnings = sum(c.status == "warn" for c in self.checks)
        lines.append(
            "healthy" + (f" ({warnings} warning(s))" if warnings else "")
            if not problems
            else f"{problems} problem(s), {warnings} warning(s)"
        )
        return "\n".join(lines)


def _probe_name(folder: Path) -> Path:
    return folder / f".doctor-{secrets.token_hex(6)}"


def _check_backend(probe: FsProbe) -> list[Check]:
    kind = probe.fs_type or "unknown"
    fs = Check(
        "filesystem",
        "ok",
        f"{kind}{' (network: a node-local flock cannot exclude other hosts)' if probe.network_fs else ''}",
        {"fs_type": probe.fs_type, "network_fs": probe.network_fs},
    )
    if probe.flock_error is not None:
        flock = Check(
            "flock",
            "warn",
            f"raises {probe.flock_error}: the lease is used, and huggingface_hub's per-blob locks are "
            "switched off under it",
            {"works": probe.flock_works, "excludes": probe.flock_excludes, "error": probe.flock_error},
        )
    elif probe.flock_works and not probe.flock_excludes:
        flock = Check(
            "flock",
            "warn",
            "a silent no-op (two descriptors did not conflict): the lease is used",
            {"works": True, "excludes": False, "error": None},
        )
    else:
        flock = Check(
            "flock", "ok", "excludes across descriptors", {"works": True, "excludes": True, "error": None}
        )
    backend = Check(
        "backend", "ok", f"auto picks {probe.backend}: {probe.reason}", {"backend": probe.backend}
    )
    return [fs, flock, backend]


def _check_excl(folder: Path) -> Check:
    name = _probe_name(folder)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        os.close(os.open(name, flags, 0o600))
        try:
            os.close(os.open(name, flags, 0o600))
        except FileExistsError:
            return Check("o_excl", "ok", "exclusive create is atomic (a second O_EXCL create fails)")
        return Check(
            "o_excl", "problem", "a second O_EXCL create of one file succeeded: no lease can exclude here"
        )
    finally:
        with contextlib.suppress(OSError):
            name.unlink()


def _check_link(folder: Path) -> Check:
    source, target = _probe_name(folder), _probe_name(folder)
    try:
        os.close(os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            os.link(source, target)
            os.link(source, target)
        except FileExistsError:
            return Check("link", "ok", "link() never replaces an existing name")
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            return Check(
                "link",
                "warn",
                f"link() raises {name}: a lease displaced in a takeover race is left aside, and its holder "
                "(fenced) waits again",
                {"errno": name},
            )
        return Check("link", "problem", "link() replaced an existing name")
    finally:
        for path in (source, target):
            with contextlib.suppress(OSError):
                path.unlink()


def _check_sharing(folder: Path) -> Check:
    mode = os.stat(folder).st_mode
    facts = {"mode": oct(stat.S_IMODE(mode)), "setgid": bool(mode & stat.S_ISGID)}
    if mode & stat.S_IWGRP and mode & stat.S_ISGID:
        return Check("sharing", "ok", "group-writable with setgid: teammates share locks and stamps", facts)
    return Check(
        "sharing",
        "warn",
        f"lock folder is {facts['mode']}: only its owner can take locks here "
        "(chmod 2775 and a shared group for a team cache)",
        facts,
    )


def _check_space(folder: Path) -> Check:
    free = shutil.disk_usage(folder).free
    facts = {"free_bytes": free}
    if free < MIN_FREE_BYTES:
        return Check("free_space", "problem", f"only {free / 2**20:.0f} MiB free: downloads will fail", facts)
    return Check("free_space", "ok", f"{free / 2**30:.1f} GiB free", facts)


def _check_clock(folder: Path, now: float) -> Check:
    name = _probe_name(folder)
    try:
        before = time.time()
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        after = time.time()
        mtime = os.stat(name).st_mtime
    finally:
        with contextlib.suppress(OSError):
            name.unlink()
    skew = 0.0 if before - 1.0 <= mtime <= after + 1.0 else mtime - (before + after) / 2
    facts = {"skew_s": round(skew, 3)}
    if abs(skew) > MAX_SKEW_S:
        return Check(
            "clock",
            "problem",
            f"this host's clock and the filesystem's differ by {skew:+.1f} s (fix NTP): lock listings and "
            "file ages mislead",
            facts,
        )
    return Check("clock", "ok", "this host's clock agrees with the filesystem's (within 1 s)", facts)


def _check_locks(cache_dir: Path, settings: Settings, now: float) -> list[Check]:
    locks = list_locks(cache_dir, settings=settings)
    rows = []
    skews = []
    for info in locks:
        holder = info.holder
        rows.append(
            {
                "repo_id": info.repo_id,
                "backend": info.backend,
                "stale": info.stale,
                "reason": info.reason,
                "holder": holder.describe() if holder else None,
                "age_s": round(now - holder.acquired_at, 1) if holder and holder.acquired_at else None,
            }
        )
        if holder is not None and info.backend == "lease" and not info.stale:
            with contextlib.suppress(OSError):
                # The holder's wall clock wrote heartbeat_at; the file server stamped the mtime.
                skews.append(holder.heartbeat_at - info.path.stat().st_mtime)
    live = [r for r in rows if not r["stale"] and r["holder"]]
    stale = [r for r in rows if r["stale"]]
    summary = f"{len(live)} held, {len(stale)} stale, {len(rows) - len(live) - len(stale)} free"
    if live:
        summary += "; held by " + ", ".join(f"{r['holder']} ({r['repo_id']}, {r['age_s']} s)" for r in live)
    checks = [
        Check(
            "locks",
            "warn" if stale else "ok",
            summary + ("; a stale lock is taken over by the next contender" if stale else ""),
            {"locks": rows},
        )
    ]
    worst = max(skews, key=abs, default=0.0)
    if abs(worst) > MAX_SKEW_S:
        checks.append(
            Check(
                "holder_clocks",
                "warn",
                f"a lease holder's clock differs from the file server's by {worst:+.1f} s "
                "(waiters judge heartbeats on their own clock, so locks still hold)",
                {"max_skew_s": round(worst, 3)},
            )
        )
    return checks


def _check_orphans(cache_dir: Path, now: float) -> Check:
    temps: list[dict[str, Any]] = []
    with contextlib.suppress(OSError):
        for repo in cache_dir.iterdir():
            blobs = repo / "blobs"
            if not repo.name.startswith(("models--", "datasets--", "spaces--")) or not blobs.is_dir():
                continue
            for entry in blobs.iterdir():
                if entry.name.endswith(".incomplete"):
                    with contextlib.suppress(OSError):
                        st = entry.lstat()
                        temps.append(
                            {"path": str(entry), "bytes": st.st_size, "age_s": round(now - st.st_mtime, 1)}
                        )
    if not temps:
        return Check("temp_files", "ok", "no temp files of unfinished downloads")
    size = sum(t["bytes"] for t in temps)
    return Check(
        "temp_files",
        "warn",
        f"{len(temps)} temp file(s), {size / 2**20:.1f} MiB: a download in progress, or orphans of a dead "
        "writer that the next prefetch of that repo removes",
        {"temp_files": temps},
    )


def diagnose(
    cache_dir: str | os.PathLike[str] | None = None, *, settings: Settings | None = None
) -> DoctorReport:
    """Check a cache (default: the one the environment names) and report every finding."""
    s = settings or Settings.from_env()
    folder = Path(cache_dir).expanduser() if cache_dir is not None else s.cache_dir
    locks = cache.lock_dir(folder)
    now = time.time()
    try:
        cache.ensure_dir(locks)
        probe = probe_filesystem(locks)
    except CacheWriteError as exc:
        unwritable = [Check("cache", "problem", f"cannot write the cache: {exc}", {"path": str(locks)})]
        if folder.is_dir():
            unwritable.append(_check_space(folder))
        return DoctorReport(str(folder), tuple(unwritable))
    checks = [Check("cache", "ok", f"writable; locks in {locks}", {"lock_dir": str(locks)})]
    checks += _check_backend(probe)
    checks += [_check_excl(locks), _check_link(locks), _check_sharing(locks), _check_space(folder)]
    checks.append(_check_clock(locks, now))
    checks += _check_locks(folder, s, now)
    checks.append(_check_orphans(folder, now))
    return DoctorReport(str(folder), tuple(checks))
