"""RepoLock across real processes: mutual exclusion under stress, killed, hung and stopped holders.

Workers are forked (fast start; a monkeypatched ``fcntl.flock`` is inherited, which is how the
no-op-flock case runs in real processes). Interleavings are forced with events and barriers; every
figure printed with ``-s`` (overlaps, takeover times) is also asserted.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _machines import REFUSED, become_machine

from hub_prefetch.errors import LockTimeout
from hub_prefetch.lock import RepoLock, clear_probe_cache
from hub_prefetch.lock.lease import held_lease, pause_heartbeat

pytestmark = pytest.mark.slow
ctx = multiprocessing.get_context("fork")
REPO = "org/contended"


@pytest.fixture(autouse=True)
def _fresh_probe() -> Iterator[None]:
    clear_probe_cache()
    yield
    clear_probe_cache()


@pytest.fixture
def reap() -> Iterator[list[Any]]:
    procs: list[Any] = []
    yield procs
    for p in procs:
        if p.is_alive():
            with_cont = getattr(p, "pid", None)
            if with_cont:
                os.kill(with_cont, signal.SIGCONT)
            p.kill()
        p.join(10)


# -- mutual exclusion under stress -------------------------------------------------------------------
def _stress_worker(
    cache: str, backend: str, n: int, log: str, counter: str, barrier: Any, ttl: float
) -> None:
    lock = RepoLock(cache, REPO, backend=backend, lease_ttl=ttl)  # type: ignore[arg-type]
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    pid = os.getpid()
    barrier.wait()
    for i in range(n):
        with lock:
            os.write(fd, f"E {pid} {i}\n".encode())
            value = int(Path(counter).read_text())  # an unlocked read-modify-write would lose updates
            Path(counter).write_text(str(value + 1))
            os.write(fd, f"X {pid} {i}\n".encode())
    os.close(fd)


def _overlaps(log: Path) -> tuple[int, int]:
    """(sections entered, sections entered while another was inside)."""
    inside: tuple[str, str] | None = None
    entered = overlaps = 0
    for line in log.read_text().splitlines():
        kind, pid, i = line.split()
        if kind == "E":
            entered += 1
            overlaps += inside is not None
            inside = (pid, i)
        else:
            overlaps += inside != (pid, i)
            inside = None
    return entered, overlaps


def _run_stress(tmp_path: Path, backend: str, procs: int, n: int, reap: list[Any]) -> tuple[int, int, float]:
    log, counter = tmp_path / "log", tmp_path / "counter"
    log.write_text("")
    counter.write_text("0")
    barrier = ctx.Barrier(procs + 1)
    workers = [
        ctx.Process(
            target=_stress_worker, args=(str(tmp_path), backend, n, str(log), str(counter), barrier, 2.0)
        )
        for _ in range(procs)
    ]
    reap.extend(workers)
    for w in workers:
        w.start()
    barrier.wait(60)
    t0 = time.monotonic()
    for w in workers:
        w.join(120)
    elapsed = time.monotonic() - t0
    assert [w.exitcode for w in workers] == [0] * procs
    entered, overlaps = _overlaps(log)
    assert int(counter.read_text()) == procs * n
    return entered, overlaps, elapsed


@pytest.mark.parametrize("backend", ["flock", "lease"])
def test_sixteen_processes_never_overlap(tmp_path: Path, backend: str, reap: list[Any]) -> None:
    entered, overlaps, elapsed = _run_stress(tmp_path, backend, 16, 50, reap)
    print(f"\n[{backend}] 16 procs x 50: entered={entered} overlaps={overlaps} in {elapsed:.2f} s")
    assert (entered, overlaps) == (800, 0)


def test_no_op_flock_picks_the_lease_and_still_excludes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reap: list[Any]
) -> None:
    monkeypatch.setattr(fcntl, "flock", lambda fd, op: None)
    assert RepoLock(tmp_path, REPO).backend == "lease"
    clear_probe_cache()  # each worker probes for itself
    entered, overlaps, elapsed = _run_stress(tmp_path, "auto", 8, 30, reap)
    print(f"\n[no-op flock -> auto] 8 procs x 30: entered={entered} overlaps={overlaps} in {elapsed:.2f} s")
    assert (entered, overlaps) == (240, 0)


# -- holders that die, hang or stop ------------------------------------------------------------------
def _holder(
    cache: str, backend: str, ttl: float, host_id: str | None, ready: Any, cmd: Any, out: Any
) -> None:
    if host_id:
        # Another host is another machine (its own boot id), not just another name: only then is its
        # pid out of our reach, and its heartbeat all we can judge it by.
        become_machine(host_id, cache)
    lock = RepoLock(cache, REPO, backend=backend, lease_ttl=ttl, host_id=host_id)  # type: ignore[arg-type]
    lock.acquire()
    hold = held_lease(lock.lease_path)  # None for flock
    ready.set()
    while True:
        order = cmd.recv()
        if order == "pause-heartbeat":
            assert hold is not None
            pause_heartbeat(hold)
        elif order == "release":
            time_released = time.time()
            lock.release()  # a holder that was evicted finds out here at the latest
            out.send({"lost": bool(getattr(hold, "lost", False)), "released_at": time_released})
            return


def _start_holder(
    tmp_path: Path, backend: str, reap: list[Any], *, ttl: float = 30.0, host_id: str | None = None
):
    ready = ctx.Event()
    cmd_recv, cmd_send = ctx.Pipe(duplex=False)
    out_recv, out_send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_holder, args=(str(tmp_path), backend, ttl, host_id, ready, cmd_recv, out_send))
    reap.append(p)
    p.start()
    assert ready.wait(30)
    return p, cmd_send, out_recv


@pytest.mark.parametrize(("backend", "bound"), [("flock", 0.5), ("lease", 1.0)])
def test_killed_holder_on_this_host_is_succeeded_at_once(
    tmp_path: Path, backend: str, bound: float, reap: list[Any]
) -> None:
    p, _cmd, _out = _start_holder(tmp_path, backend, reap)
    waiter = RepoLock(tmp_path, REPO, backend=backend, timeout=0.2)  # type: ignore[arg-type]
    with pytest.raises(TimeoutError):
        waiter.acquire()  # it really is held
    os.kill(p.pid, signal.SIGKILL)
    t0 = time.monotonic()
    waiter.acquire(timeout=10)  # the killed child is a zombie until joined: still dead
    took = time.monotonic() - t0
    waiter.release()
    print(f"\n[{backend}] SIGKILLed holder on this host taken over in {took * 1000:.0f} ms")
    assert took < bound


needs_machines = pytest.mark.skipif(REFUSED is not None, reason=REFUSED or "")


@needs_machines
def test_killed_holder_on_another_host_is_succeeded_within_ttl(tmp_path: Path, reap: list[Any]) -> None:
    ttl = 1.0
    p, _cmd, _out = _start_holder(tmp_path, "lease", reap, ttl=ttl, host_id="node-b")
    waiter = RepoLock(tmp_path, REPO, backend="lease", lease_ttl=ttl)
    assert waiter.holder().host == "node-b"  # type: ignore[union-attr]
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    t0 = time.monotonic()
    waiter.acquire(timeout=10)
    took = time.monotonic() - t0
    waiter.release()
    print(f"\n[lease] SIGKILLed holder on another host taken over in {took:.2f} s (ttl {ttl} s)")
    # never before its heartbeat has been silent for the TTL, never much after TTL + one heartbeat
    assert ttl <= took <= ttl + ttl / 3 + 0.75  # slack: scheduling on a loaded 2-core runner


@needs_machines
def test_live_holder_with_a_short_ttl_is_never_evicted(tmp_path: Path, reap: list[Any]) -> None:
    ttl = 0.8
    _p, cmd, out = _start_holder(tmp_path, "lease", reap, ttl=ttl, host_id="node-b")
    waiter = RepoLock(tmp_path, REPO, backend="lease", lease_ttl=ttl)
    with pytest.raises(LockTimeout) as info:
        waiter.acquire(timeout=3 * ttl)  # three TTLs of a heartbeating holder on another host
    assert info.value.holder is not None and info.value.holder["host"] == "node-b"
    assert waiter.holder().seq >= 6  # type: ignore[union-attr]  # it was heartbeating all along
    cmd.send("release")
    report = out.recv()
    assert report["lost"] is False
    waiter.acquire(timeout=5)
    waiter.release()


@needs_machines
def test_holder_whose_heartbeat_stops_is_evicted(tmp_path: Path, reap: list[Any]) -> None:
    ttl = 0.5
    p, cmd, out = _start_holder(tmp_path, "lease", reap, ttl=ttl, host_id="node-b")
    waiter = RepoLock(tmp_path, REPO, backend="lease", lease_ttl=ttl)
    cmd.send("pause-heartbeat")
    t0 = time.monotonic()
    waiter.acquire(timeout=10)
    took = time.monotonic() - t0
    assert p.is_alive()  # evicted for silence, not for death
    assert waiter.holder().pid == os.getpid()  # type: ignore[union-attr]
    waiter.release()
    print(f"\n[lease] hung holder (heartbeat stopped) evicted after {took:.2f} s (ttl {ttl} s)")
    assert ttl <= took <= ttl + ttl / 3 + 0.75
    cmd.send("release")
    out.recv()


@needs_machines
def test_stopped_holder_on_another_host_is_evicted_and_learns_it(tmp_path: Path, reap: list[Any]) -> None:
    ttl = 0.5
    p, cmd, out = _start_holder(tmp_path, "lease", reap, ttl=ttl, host_id="node-b")
    waiter = RepoLock(tmp_path, REPO, backend="lease", lease_ttl=ttl)
    os.kill(p.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    waiter.acquire(timeout=10)
    took = time.monotonic() - t0
    os.kill(p.pid, signal.SIGCONT)
    cmd.send("release")
    report = out.recv()
    assert waiter.holder().pid == os.getpid()  # type: ignore[union-attr]  # its release left ours alone
    waiter.release()
    print(f"\n[lease] SIGSTOPped holder on another host evicted after {took:.2f} s (ttl {ttl} s)")
    assert ttl <= took <= ttl + ttl / 3 + 0.75
    assert report["lost"] is True


# -- many waiters race to take over one stale lease --------------------------------------------------
def _racer(cache: str, ttl: float, log: str, barrier: Any) -> None:
    lock = RepoLock(cache, REPO, backend="lease", lease_ttl=ttl)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    barrier.wait()
    with lock:
        os.write(fd, f"E {os.getpid()} 0\n".encode())
        time.sleep(0.02)  # long enough that a second winner would overlap
        os.write(fd, f"X {os.getpid()} 0\n".encode())


@pytest.mark.parametrize(
    "host_id", [None, pytest.param("node-b", marks=needs_machines)], ids=["this-machine", "other-machine"]
)
def test_racing_takeovers_of_one_stale_lease_admit_one_at_a_time(
    tmp_path: Path, host_id: str | None, reap: list[Any]
) -> None:
    ttl = 0.5
    p, _cmd, _out = _start_holder(tmp_path, "lease", reap, ttl=ttl, host_id=host_id)
    log = tmp_path / "log"
    log.write_text("")
    barrier = ctx.Barrier(9)
    racers = [ctx.Process(target=_racer, args=(str(tmp_path), ttl, str(log), barrier)) for _ in range(8)]
    reap.extend(racers)
    for r in racers:
        r.start()
    barrier.wait(30)
    time.sleep(0.1)  # all racers are now observing the live lease
    os.kill(p.pid, signal.SIGKILL)
    for r in racers:
        r.join(60)
    assert [r.exitcode for r in racers] == [0] * 8
    assert _overlaps(log) == (8, 0)
    leftovers = sorted(n.name for n in (tmp_path / ".locks" / "hub_prefetch").iterdir())
    assert not any(".break." in n or ".stale." in n or n.endswith(".lease") for n in leftovers), leftovers
