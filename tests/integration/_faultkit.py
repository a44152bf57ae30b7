"""Shared helpers of the fault-matrix, bad-input and security tests: a reusable crew of worker
processes (imports paid once per module, one round per test), what a load needs, and cache inspection."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hub_prefetch.select import select_files
from hub_prefetch.testing.pytest_plugin import quiet_env
from hub_prefetch.testing.repos import BuiltRepo
from hub_prefetch.testing.workers import WorkerPool, WorkerResult

DISPATCH = "tests.support.fault_targets:dispatch"
PRELOAD = ("hub_prefetch.testing.targets", "hub_prefetch.testing.protected_targets")


def worker_env(hub_url: str, home: Path, **extra: str | None) -> dict[str, str | None]:
    env: dict[str, str | None] = dict(quiet_env())
    env.update(
        {
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(home / "hub"),
            "HF_ENDPOINT": hub_url,
            "HF_TOKEN": None,
            "HF_HUB_OFFLINE": None,
            "TRANSFORMERS_OFFLINE": None,
            # Retries in tests: bounded and quick, never a real 20 s backoff.
            "HUB_PREFETCH_BACKOFF": "0.05",
            "HUB_PREFETCH_BACKOFF_MAX": "0.5",
        }
    )
    env.update(extra)
    return env


class Crew:
    """``n`` worker processes running :func:`tests.support.fault_targets.dispatch`, one round per
    call to :meth:`run`. A crew whose worker died (killed, timed out) is replaced on the next run."""

    def __init__(self, n: int, env: Mapping[str, str | None], timeout: float = 180.0) -> None:
        self.n, self.env, self.timeout = n, dict(env), timeout
        self.pool: WorkerPool | None = None

    def _fresh(self) -> WorkerPool:
        self.close()
        pool = WorkerPool(
            DISPATCH, {"action": "noop"}, n=self.n, env=self.env, timeout=self.timeout, preload=PRELOAD
        )
        pool.start()
        pool.wait_ready()
        pool.go()
        results = pool.round_results()
        assert all(r.ok for r in results), [(r.error_type, r.error, r.stderr[-2000:]) for r in results]
        self.pool = pool
        return pool

    def run(
        self,
        kwargs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        before_go: Callable[[], None] | None = None,
        timeout: float | None = None,
    ) -> list[WorkerResult]:
        pool = self.pool or self._fresh()
        try:
            pool.next_round(kwargs)
        except RuntimeError:
            pool = self._fresh()
            pool.next_round(kwargs)
        pool.wait_ready()
        if before_go is not None:
            before_go()
        pool.go()
        results = pool.round_results(timeout)
        if any(r.error_type in ("Killed", "Timeout", "Crashed") for r in results):
            self.close()  # a dead worker cannot take another round
        return results

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def needed_files(hub_store: Any, built: BuiltRepo, subfolders: Sequence[str] | None = None) -> dict[str, int]:
    """What a verified prefetch of ``built``'s subfolder selects, with sizes (from the store itself)."""
    listing = hub_store.files(built.repo_id, built.commit)
    selection = select_files(
        listing,
        list(subfolders if subfolders is not None else [built.subfolder]),
        load_index=lambda p: hub_store.read(built.repo_id, built.commit, p),
    )
    return {p: listing[p].size for p in selection.files}


def repo_dir(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def temp_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.name.endswith(".incomplete") or p.name.endswith(".tmp"))


def tree_state(root: Path) -> dict[str, tuple[int, int, int]]:
    """(mtime_ns, size, mode) of every entry below ``root`` (links not followed)."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            state[os.path.relpath(full, root)] = (st.st_mtime_ns, st.st_size, st.st_mode)
    return state


def failures(results: Sequence[WorkerResult]) -> list[tuple[int, str | None, str]]:
    return [
        (r.index, r.error_type, (r.error or "")[:300] + (r.stderr or "")[-1500:]) for r in results if not r.ok
    ]


def wait_until(predicate: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    """Poll a condition that an event sets (a server log entry, a marker file): the condition is the
    synchronisation, the poll interval only its latency."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout} s")
        time.sleep(0.02)


# -- mounts (root on Linux); every helper says whether it could, tests fall back to injection if not ----


def _run(*cmd: str) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[bool]:
    """Mount a size-limited tmpfs on ``path`` for the block; yields False (nothing mounted) if not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and _run(
        "mount", "-t", "tmpfs", "-o", f"size={size},mode=0775", "tmpfs", str(path)
    )
    try:
        yield mounted
    finally:
        if mounted:
            _run("umount", "-l", str(path))


def remount_size(path: Path, size: str) -> bool:
    return _run("mount", "-o", f"remount,size={size}", str(path))


@contextlib.contextmanager
def read_only_view(path: Path) -> Iterator[bool]:
    """Make ``path`` read-only for everyone, root included (a read-only bind mount over itself)."""
    mounted = os.geteuid() == 0 and _run("mount", "--bind", str(path), str(path))
    if mounted and not _run("mount", "-o", "remount,ro,bind", str(path)):
        _run("umount", "-l", str(path))
        mounted = False
    try:
        yield mounted
    finally:
        if mounted:
            _run("umount", "-l", str(path))
