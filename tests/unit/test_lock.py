"""RepoLock inside one process: keys and paths, the backend probe, threads, re-entry, timeouts, logs.

Timeouts, TTLs and the log cadence run on a :class:`FakeClock`: its time moves only when a lock sleeps
or waits on its gate, and a test forces the interleaving it needs by scheduling an action at a time.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import logging
import os
import pickle
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub_prefetch.errors import CacheWriteError, LockTimeout
from hub_prefetch.lock import (
    HolderInfo,
    HostIdentity,
    RepoLock,
    clear_probe_cache,
    list_locks,
    probe_filesystem,
    repo_lock,
)
from hub_prefetch.lock import probe as fsprobe
from hub_prefetch.lock.identity import encode_record
from hub_prefetch.settings import LockBackendName, Settings

BACKENDS: list[LockBackendName] = ["flock", "lease"]


class FakeClock:
    """A :class:`~hub_prefetch.lock.Clock` whose time moves only when a lock sleeps or waits.

    ``at(t, action)`` runs ``action`` (in the waiting thread) when time reaches ``t`` seconds after
    the start: a holder lets go, a heartbeat is written, at an exact moment and never in a race with
    the waiter. Time never moves by itself, so no test waits on the wall clock or its scheduling.
    """

    def __init__(self) -> None:
        self.start = self.now = 0.0
        self._due: list[tuple[float, Callable[[], None]]] = []
        self._guard = threading.Lock()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1.7e9 + self.now

    def elapsed(self) -> float:
        return self.now - self.start

    def at(self, t: float, action: Callable[[], None]) -> None:
        with self._guard:
            self._due.append((self.start + t, action))
            self._due.sort(key=lambda item: item[0])

    def sleep(self, seconds: float) -> None:
        target = self.now + max(seconds, 0.0)
        while True:
            with self._guard:
                if not self._due or self._due[0][0] > target:
                    self.now = max(self.now, target)
                    return
                when, action = self._due.pop(0)
                self.now = max(self.now, when)
            action()

    def acquire(self, gate: threading.Lock, timeout: float) -> bool:
        if gate.acquire(False):
            return True
        self.sleep(timeout)
        return gate.acquire(False)


def _hold_in_thread(lock: RepoLock) -> tuple[threading.Thread, threading.Event]:
    """``lock`` held by another thread (the same thread would re-enter) until the event is set."""
    held, go = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            go.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(10)
    return t, go


def _let_go(thread: threading.Thread, go: threading.Event) -> Callable[[], None]:
    """An action that makes the holding thread release, and returns once it has."""

    def action() -> None:
        go.set()
        thread.join(10)

    return action


@pytest.fixture(autouse=True)
def _fresh_probe():
    clear_probe_cache()
    yield
    clear_probe_cache()


# -- keys and paths ----------------------------------------------------------------------------------
HOSTILE_IDS = ["../x", "../../etc/passwd", "/abs/path", "a/../../b", "x" * 5000, "nul\0byte", "sp ace/é", ""]


@pytest.mark.parametrize("repo_id", HOSTILE_IDS)
def test_hostile_repo_ids_stay_in_the_lock_folder(tmp_path: Path, repo_id: str) -> None:
    for backend in BACKENDS:
        lock = RepoLock(tmp_path, repo_id, revision="../../rev", backend=backend)
        with lock:
            assert lock.path.parent == tmp_path / ".locks" / "hub_prefetch"
            assert len(lock.path.stem) == 32 and all(c in "0123456789abcdef" for c in lock.path.stem)
            assert lock.holder() is not None and lock.holder().repo_id == repo_id  # type: ignore[union-attr]
    outside = {p for p in tmp_path.rglob("*") if ".locks" not in p.parts}
    assert outside == set()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(repo_id=st.text(max_size=300), revision=st.text(min_size=1, max_size=60))
def test_any_text_key_hashes_to_a_file_in_the_lock_folder(
    tmp_path: Path, repo_id: str, revision: str
) -> None:
    lock = RepoLock(tmp_path, repo_id, revision=revision, backend="flock")
    with lock:
        assert lock.path.parent == tmp_path / ".locks" / "hub_prefetch"
        assert lock.path.exists()


def test_key_is_type_and_id_whatever_the_revision(tmp_path: Path) -> None:
    base = RepoLock(tmp_path, "org/m")
    assert RepoLock(tmp_path, "org/m").path == base.path
    # One writer per repo: a commit-pinned and a branch load share blobs, refs and per-blob locks.
    assert RepoLock(tmp_path, "org/m", revision="v1").path == base.path
    assert RepoLock(tmp_path, "org/m", revision="a" * 40).path == base.path
    assert RepoLock(tmp_path, "org/m", repo_type="dataset").path != base.path
    assert RepoLock(tmp_path, "org/n").path != base.path
    assert RepoLock(tmp_path / "other", "org/m").path.parent != base.path.parent


def test_settings_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_PREFETCH_LOCK", "lease")
    monkeypatch.setenv("HUB_PREFETCH_LOCK_TIMEOUT", "7.5")
    monkeypatch.setenv("HUB_PREFETCH_LEASE_TTL", "3")
    monkeypatch.setenv("HUB_PREFETCH_HOST_ID", "node-17")
    lock = RepoLock(tmp_path, "org/m")
    assert (lock.backend, lock.timeout, lock.lease_ttl, lock.identity.host) == ("lease", 7.5, 3.0, "node-17")
    # the variable is read in Settings, nowhere else: HostIdentity takes the name from its caller
    assert HostIdentity.local().host == socket.gethostname()
    given = Settings.from_env(cache_dir=tmp_path).replace(host_id="node-3")
    assert RepoLock(tmp_path, "org/m", settings=given).identity.host == "node-3"
    explicit = RepoLock(tmp_path, "org/m", backend="flock", timeout=1, lease_ttl=9, host_id="h")
    assert (explicit.backend, explicit.timeout, explicit.lease_ttl, explicit.identity.host) == (
        "flock",
        1,
        9,
        "h",
    )


# -- the probe ---------------------------------------------------------------------------------------
def test_probe_picks_flock_on_a_local_filesystem(tmp_path: Path) -> None:
    probe = probe_filesystem(tmp_path)
    assert probe.backend == "flock", probe.reason
    assert (probe.flock_works, probe.flock_excludes, probe.flock_error, probe.network_fs) == (
        True,
        True,
        None,
        False,
    )
    assert not probe.flock_raises
    lock = RepoLock(tmp_path, "org/m")
    assert lock.backend == "flock" and lock.probe == probe_filesystem(lock.lock_dir)
    requested = RepoLock(tmp_path, "org/m", backend="lease").probe
    assert requested.backend == "lease" and requested.reason.startswith("requested")
    assert (requested.flock_works, requested.flock_excludes) == (True, True)  # still tested
    assert list(tmp_path.iterdir()) == [tmp_path / ".locks"]  # the probe file is gone


@pytest.mark.parametrize(
    "code", [errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.EACCES, errno.EBADF]
)
def test_probe_picks_the_lease_when_flock_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def broken(fd: int, op: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", broken)
    probe = probe_filesystem(tmp_path)
    assert probe.backend == "lease" and probe.flock_raises and probe.flock_works is False
    assert errno.errorcode[code] in probe.reason
    if code != errno.EACCES:  # EACCES is contention to every flock caller; here nobody else holds the file
        assert probe.flock_error == errno.errorcode[code]
    lock = RepoLock(tmp_path, "org/m")
    with lock:
        assert lock.backend == "lease" and lock.lease_path.exists() and lock.probe.flock_raises
    assert not lock.lease_path.exists()


def test_probe_detects_a_silent_no_op_flock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fcntl, "flock", lambda fd, op: None)
    probe = probe_filesystem(tmp_path)
    assert probe.backend == "lease" and "no-op" in probe.reason
    assert (probe.flock_works, probe.flock_excludes, probe.flock_raises) == (True, False, False)


def test_forced_flock_where_it_raises_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(CacheWriteError, match="ENOLCK"):
        RepoLock(tmp_path, "org/m", backend="flock").acquire()


@pytest.mark.parametrize(("magic", "name"), [(0x6969, "nfs"), (0x0BD00BD0, "lustre"), (0x47504653, "gpfs")])
def test_network_filesystems_get_the_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, magic: int, name: str
) -> None:
    monkeypatch.setattr(fsprobe, "_statfs_type", lambda path: magic)
    monkeypatch.setattr(fsprobe, "_mountinfo_type", lambda path: None)
    probe = probe_filesystem(tmp_path)
    assert probe.backend == "lease" and name in probe.reason and "other hosts" in probe.reason
    assert (probe.network_fs, probe.fs_type, probe.flock_raises) == (True, name, False)


@pytest.mark.parametrize("fstype", ["nfs4", "fuse.sshfs", "cifs", "lustre", "gpfs", "ceph"])
def test_network_filesystems_by_mountinfo_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fstype: str
) -> None:
    monkeypatch.setattr(fsprobe, "_statfs_type", lambda path: None)
    monkeypatch.setattr(fsprobe, "_mountinfo_type", lambda path: fstype)
    probe = probe_filesystem(tmp_path)
    assert (probe.backend, probe.reason) == (
        "lease",
        f"network filesystem {fstype}: a node-local flock does not exclude other hosts",
    )


def test_filesystem_type_of_a_real_folder_is_read() -> None:
    name, remote = fsprobe.filesystem_type(Path("/proc"))
    assert name == "proc" and remote is False
    assert fsprobe._statfs_type(Path("/proc")) == 0x9FA0  # PROC_SUPER_MAGIC


# -- threads and re-entry ----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shared_instance", [True, False])
def test_threads_exclude_each_other(tmp_path: Path, backend: LockBackendName, shared_instance: bool) -> None:
    shared = RepoLock(tmp_path, "org/m", backend=backend)
    inside = 0
    overlaps = 0
    entries = 0
    guard = threading.Lock()
    start = threading.Barrier(6)

    def worker() -> None:
        nonlocal inside, overlaps, entries
        lock = shared if shared_instance else RepoLock(tmp_path, "org/m", backend=backend)
        start.wait()
        for _ in range(40):
            with lock:
                with guard:
                    inside += 1
                    overlaps += inside > 1
                    entries += 1
                time.sleep(0)  # invite a switch inside the critical section
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert (entries, overlaps) == (240, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_thread_reentry_is_counted(tmp_path: Path, backend: LockBackendName) -> None:
    outer = RepoLock(tmp_path, "org/m", backend=backend)
    other = RepoLock(tmp_path, "org/m", backend=backend)
    probe = RepoLock(tmp_path, "org/m", backend=backend)
    got: list[bool] = []

    def try_from_another_thread() -> None:
        try:
            probe.acquire(timeout=0)
        except LockTimeout:
            got.append(False)
        else:
            got.append(True)
            probe.release()

    with outer, outer, other:
        assert outer.is_held and other.is_held
    # released only with the last level: another thread now gets it at once
    t = threading.Thread(target=try_from_another_thread)
    t.start()
    t.join()
    assert got == [True]
    with outer:
        with other:
            pass
        t = threading.Thread(target=try_from_another_thread)
        t.start()
        t.join()
    assert got == [True, False]
    with pytest.raises(RuntimeError, match="not held"):
        outer.release()


@pytest.mark.parametrize("backend", BACKENDS)
def test_reentry_sees_through_different_spellings_of_the_cache(
    tmp_path: Path, backend: LockBackendName
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    outer = RepoLock(tmp_path / "real", "org/m", backend=backend, timeout=2)
    inner = RepoLock(str(tmp_path / "alias") + "/./", "org/m", backend=backend, timeout=2)
    with outer, inner:  # would wait on itself (and time out) if the spellings were two gates
        assert inner.is_held


@pytest.mark.parametrize("backend", BACKENDS)
def test_timeout_is_typed_picklable_and_names_the_holder(tmp_path: Path, backend: LockBackendName) -> None:
    clock = FakeClock()
    holder = RepoLock(tmp_path, "org/m", revision="v2", backend=backend, clock=clock)
    t, go = _hold_in_thread(holder)
    try:
        waiter = RepoLock(tmp_path, "org/m", revision="v2", backend=backend, timeout=0.3, clock=clock)
        with pytest.raises(LockTimeout) as info:
            waiter.acquire()
        assert 0.3 - 1e-9 <= clock.elapsed() < 0.3 + 0.2  # the deadline, give or take one poll
    finally:
        go.set()
        t.join()
    err = info.value
    assert isinstance(err, TimeoutError)
    assert err.lock_path == str(holder.file)
    assert err.holder is not None and err.waited_s is not None
    assert err.holder["pid"] == os.getpid() and err.holder["backend"] == backend
    assert err.waited_s >= 0.3
    clone = pickle.loads(pickle.dumps(err))
    assert (type(clone), clone.lock_path, clone.holder, str(clone)) == (
        LockTimeout,
        err.lock_path,
        err.holder,
        str(err),
    )
    # per-call timeout overrides, and zero means one attempt
    with holder:
        pass
    waiter.acquire(timeout=0)
    waiter.release()


def test_wait_is_logged_at_a_steady_cadence(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    s = Settings.from_env(cache_dir=tmp_path).replace(wait_log_interval=0.1)
    holder = RepoLock(tmp_path, "org/m", backend="lease", settings=s, clock=clock)
    waiter = RepoLock(tmp_path, "org/m", backend="lease", settings=s, timeout=0.55, clock=clock)
    caplog.set_level(logging.INFO, logger="hub_prefetch.lock")
    t, go = _hold_in_thread(holder)
    clock.at(0.45, _let_go(t, go))
    waiter.acquire()
    waiter.release()
    assert 0.45 <= clock.elapsed() < 0.55
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for")]
    # the first line is DEBUG (a short wait is not news); then one INFO line every 0.1 s: 0.2, 0.3, 0.4
    assert len(lines) == 3, lines
    assert all(
        f"waiting for org/m@main: held by {holder.identity.host}:{os.getpid()} for" in m for m in lines
    )
    assert all("(lease)" in m for m in lines)
    assert any(r.getMessage().startswith("acquired org/m@main after") for r in caplog.records)


def _plant_foreign_lease(lock: RepoLock, *, ttl: float, seq: int = 0) -> None:
    """A lease record written by a process on another host (whose pid this host cannot judge)."""
    lock.lock_dir.mkdir(parents=True, exist_ok=True)
    record = HolderInfo(
        host="node-b",
        pid=4242,
        start_time=None,
        token="b" * 32,
        acquired_at=1.7e9,
        heartbeat_at=1.7e9 + seq,
        backend="lease",
        repo_id=lock.repo_id,
        revision=lock.revision,
        ttl=ttl,
        seq=seq,
    )
    lock.lease_path.write_bytes(encode_record(record))


def test_silent_lease_of_another_host_is_taken_over_after_its_ttl_not_before(tmp_path: Path) -> None:
    clock = FakeClock()
    waiter = RepoLock(tmp_path, "org/m", backend="lease", clock=clock)
    _plant_foreign_lease(waiter, ttl=30.0)
    with pytest.raises(LockTimeout) as info:
        waiter.acquire(timeout=29.0)
    assert info.value.holder is not None and info.value.holder["host"] == "node-b"
    start = clock.elapsed()
    with waiter:  # a fresh wait: the file must stay unchanged for the TTL the holder recorded
        assert waiter.holder().pid == os.getpid()  # type: ignore[union-attr]
    assert 30.0 <= clock.elapsed() - start < 30.0 + 0.2


def test_heartbeating_lease_of_another_host_is_never_taken_over(tmp_path: Path) -> None:
    clock = FakeClock()
    waiter = RepoLock(tmp_path, "org/m", backend="lease", clock=clock)
    _plant_foreign_lease(waiter, ttl=30.0)
    for beat in range(1, 10):  # every 10 s for 90 s, as the holder's heartbeat thread would
        clock.at(10.0 * beat, functools.partial(_plant_foreign_lease, waiter, ttl=30.0, seq=beat))
    with pytest.raises(LockTimeout) as info:
        waiter.acquire(timeout=100.0)  # over three TTLs
    assert info.value.holder is not None and info.value.holder["host"] == "node-b"
    assert waiter.holder().seq == 9  # type: ignore[union-attr]
    start = clock.elapsed()
    waiter.acquire(timeout=40.0)  # the heartbeat stopped at 90 s: taken over one TTL into this wait
    waiter.release()
    assert 30.0 <= clock.elapsed() - start < 30.0 + 0.2  # silence counts from the waiter's own sighting


# -- a shared multi-user cache -----------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_lock_files_are_group_writable(tmp_path: Path, backend: LockBackendName) -> None:
    old = os.umask(0o022)
    try:
        lock = RepoLock(tmp_path, "org/m", backend=backend)
        with lock:
            mode = stat.S_IMODE(os.lstat(lock.file).st_mode)
            assert mode & 0o060 == 0o060
        assert stat.S_IMODE(os.stat(lock.lock_dir).st_mode) & 0o070 == 0o070
    finally:
        os.umask(old)


def test_flock_refuses_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    lock = RepoLock(tmp_path, "org/m", backend="flock")
    lock.lock_dir.mkdir(parents=True)
    lock.path.symlink_to(victim)
    with pytest.raises(CacheWriteError):
        lock.acquire()
    assert victim.read_text() == "precious"


def test_lease_moves_a_planted_symlink_aside_without_following_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    clock = FakeClock()
    lock = RepoLock(tmp_path, "org/m", backend="lease", lease_ttl=0.3, timeout=5, clock=clock)
    lock.lock_dir.mkdir(parents=True)
    lock.lease_path.symlink_to(victim)
    with lock:
        assert not lock.lease_path.is_symlink()
        assert lock.holder().pid == os.getpid()  # type: ignore[union-attr]
    assert victim.read_text() == "precious"
    assert 0.3 - 1e-9 <= clock.elapsed() < 0.3 + 0.2  # moved aside once unchanged for its TTL, not before


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode == 0


@pytest.fixture
def readonly_cache(tmp_path: Path):
    root = tmp_path / "ro"
    root.mkdir()
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)):
        if os.geteuid() == 0:
            pytest.skip("cannot mount a tmpfs here")
        (root / ".locks" / "hub_prefetch").mkdir(parents=True)
        for p in (root / ".locks" / "hub_prefetch", root / ".locks", root):
            p.chmod(0o555)
        yield root
        for p in (root, root / ".locks", root / ".locks" / "hub_prefetch"):
            p.chmod(0o755)
        return
    try:
        (root / ".locks" / "hub_prefetch").mkdir(parents=True)
        assert _mount("-o", "remount,ro", str(root))
        yield root
    finally:
        subprocess.run(["umount", str(root)], check=False)


@pytest.mark.parametrize("backend", ["auto", "flock", "lease"])
def test_read_only_lock_folder_fails_at_once(readonly_cache: Path, backend: LockBackendName) -> None:
    t0 = time.monotonic()
    with pytest.raises(CacheWriteError):
        RepoLock(readonly_cache, "org/m", backend=backend).acquire()
    assert time.monotonic() - t0 < 1


def test_read_only_cache_without_lock_folder_fails_at_once(readonly_cache: Path) -> None:
    with pytest.raises(CacheWriteError):
        RepoLock(readonly_cache / "sub", "org/m").acquire()


# -- async -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_async_tasks_exclude_each_other_and_cancel_cleanly(tmp_path: Path, backend: LockBackendName) -> None:
    async def main() -> list[str]:
        events: list[str] = []

        async def task(name: str) -> None:
            lock = RepoLock(tmp_path, "org/m", backend=backend)
            async with lock, lock:  # the same task re-enters
                events.append(f"in {name}")
                await asyncio.sleep(0.05)
                events.append(f"out {name}")

        await asyncio.gather(*(task(str(i)) for i in range(4)))
        # a waiter cancelled while blocked must not leave the lock held
        holder = RepoLock(tmp_path, "org/m", backend=backend)
        await holder.__aenter__()
        waiter = asyncio.create_task(RepoLock(tmp_path, "org/m", backend=backend).__aenter__())
        await asyncio.sleep(0.2)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await holder.__aexit__(None, None, None)
        await asyncio.sleep(0.3)  # the abandoned worker thread notices within one gate slice
        again = RepoLock(tmp_path, "org/m", backend=backend)
        again.acquire(timeout=2)
        again.release()
        return events

    events = asyncio.run(main())
    assert len(events) == 8
    for i in range(0, 8, 2):
        assert events[i].startswith("in ") and events[i + 1] == "out " + events[i][3:]


# -- listing -----------------------------------------------------------------------------------------
def test_list_locks_reports_holders_and_stale_leases(tmp_path: Path) -> None:
    assert list_locks(tmp_path) == []
    flock = repo_lock(tmp_path, "org/a", backend="flock")
    lease = repo_lock(tmp_path, "org/b", revision="v1", backend="lease")
    dead = subprocess.Popen(["true"])
    dead.wait()
    ghost = RepoLock(tmp_path, "org/c", repo_type="dataset", backend="lease")
    ghost.lock_dir.mkdir(parents=True, exist_ok=True)
    record = HolderInfo(
        host=ghost.identity.host,
        pid=dead.pid,
        start_time=None,
        token="0" * 32,
        acquired_at=time.time(),
        heartbeat_at=time.time(),
        backend="lease",
        repo_id="org/c",
        repo_type="dataset",
        revision="main",
        ttl=30,
        boot_id=ghost.identity.boot_id,
        pidns=ghost.identity.pidns,
    )
    ghost.lease_path.write_bytes(encode_record(record))
    with flock, lease:
        infos = {i.key: i for i in list_locks(tmp_path)}
        assert infos["model:org/a@main"].holder.pid == os.getpid()  # type: ignore[union-attr]
        assert (infos["model:org/a@main"].stale, infos["model:org/a@main"].reason) == (False, "held")
        assert infos["model:org/b@v1"].backend == "lease" and not infos["model:org/b@v1"].stale
        gone = infos["dataset:org/c@main"]
        assert gone.stale and "gone" in gone.reason and gone.holder.pid == dead.pid  # type: ignore[union-attr]
    after = {i.key: i for i in list_locks(tmp_path)}
    assert after["model:org/a@main"].holder is None and after["model:org/a@main"].reason == "free"
    assert "model:org/b@v1" not in after
    # the stale lease is taken over at once (its holder is dead on this host)
    t0 = time.monotonic()
    with ghost:
        assert ghost.holder().pid == os.getpid()  # type: ignore[union-attr]
    assert time.monotonic() - t0 < 1


# -- fork ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_forked_child_inherits_no_hold(tmp_path: Path, backend: LockBackendName) -> None:
    lock = RepoLock(tmp_path, "org/m", backend=backend)
    with lock:
        pid = os.fork()
        if pid == 0:  # child: must not hold, must not be able to take it, must not break it on exit
            code = 0
            try:
                if lock.is_held:
                    code = 3
                other = RepoLock(tmp_path, "org/m", backend=backend, timeout=0.2, clock=FakeClock())
                try:
                    other.acquire()
                    code = 4
                except LockTimeout:
                    pass
                lock.release()  # a no-op in the child
            except BaseException:
                code = 5
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert lock.holder().pid == os.getpid()  # type: ignore[union-attr]
        probe = RepoLock(tmp_path, "org/m", backend=backend, clock=FakeClock())
        got = []
        t = threading.Thread(target=lambda: got.append(_try(probe)))
        t.start()
        t.join()
        assert got == [False]


def _try(lock: RepoLock) -> bool:
    try:
        lock.acquire(timeout=0.1)
    except LockTimeout:
        return False
    lock.release()
    return True


def test_acquire_unless_leaves_without_the_lock_once_done(tmp_path):
    import threading as _threading

    from hub_prefetch.lock import RepoLock

    holder = RepoLock(tmp_path, "org/m", backend="flock")
    waiter = RepoLock(tmp_path, "org/m", backend="flock")
    done = _threading.Event()
    outcome: list[bool] = []
    with holder:
        t = _threading.Thread(target=lambda: outcome.append(waiter.acquire_unless(done.is_set, timeout=30)))
        t.start()
        done.set()  # the holder's work became visible while it still holds the lock
        t.join(30)
        assert outcome == [False]
        assert holder.is_held
    assert waiter.acquire_unless(lambda: False, timeout=5) is True
    waiter.release()


# -- an interrupted acquire gives back exactly what it took -----------------------------------------
class _Interrupt:
    """Raise KeyboardInterrupt on the first call of the wrapped function (Ctrl-C at that step)."""

    def __init__(self, real: Any) -> None:
        self.real, self.fired = real, False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt
        return self.real(*args, **kwargs)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _steps() -> dict[str, dict[str, tuple[Any, str]]]:
    from hub_prefetch.lock import flock, lease

    return {
        "lease": {
            "writing-the-record": (lease, "encode_record"),
            "taking-the-epoch": (lease.Lease, "_next_epoch"),
            "recording-the-epoch": (lease.Lease, "_rewrite"),
            "starting-the-heartbeat": (lease.Lease, "_start_heartbeat"),
            "after-winning": (lease.Lease, "try_acquire"),
        },
        "flock": {
            "the-flock-call": (flock, "try_flock"),
            "writing-the-record": (flock, "encode_record"),
            "after-winning": (flock.FlockBackend, "try_acquire"),
        },
    }


def _patch_step(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, *, after: bool) -> _Interrupt:
    real = getattr(owner, name)
    trap = _Interrupt(real)
    if not after:
        monkeypatch.setattr(owner, name, trap)
        return trap

    def won_then_interrupted(*args: Any, **kwargs: Any) -> Any:
        # The step itself succeeds, then the interrupt lands before its caller sees the result.
        result = real(*args, **kwargs)
        if result and not trap.fired:
            trap.fired = True
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(owner, name, won_then_interrupted)
    return trap


@pytest.mark.parametrize(
    ("backend", "step"),
    [(backend, step) for backend, steps in _steps().items() for step in steps],
)
def test_ctrl_c_at_each_step_of_acquire_leaks_no_gate_no_lease_no_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: LockBackendName, step: str
) -> None:
    from hub_prefetch.lock.lease import held_lease

    lock = RepoLock(tmp_path, "org/m", backend=backend, lease_ttl=30)
    assert lock.backend == backend
    fds = _open_fds()
    owner, name = _steps()[backend][step]
    trap = _patch_step(monkeypatch, owner, name, after=step == "after-winning")
    with pytest.raises(KeyboardInterrupt):
        lock.acquire(timeout=5)
    assert trap.fired and not lock.is_held
    monkeypatch.undo()
    assert _open_fds() == fds, "a descriptor leaked"
    assert not lock.lease_path.exists(), "an orphan lease was left behind"
    assert held_lease(lock.lease_path) is None, "a heartbeat still runs for a lease nobody holds"
    # The in-process gate is free and the lock itself can be taken at once, from another thread too.
    got: list[bool] = []
    other = RepoLock(tmp_path, "org/m", backend=backend, lease_ttl=30)
    thread = threading.Thread(target=lambda: got.append(bool(other.acquire(timeout=2))))
    thread.start()
    thread.join(10)
    assert got == [True]
    other.release()
