"""The lease across simulated machines: identity by boot id, no false takeovers, fencing.

A second machine is a process in its own mount namespace with its own boot id bind-mounted over
``/proc/sys/kernel/random/boot_id`` (``unshare --mount``): the same host name, the same pid namespace
name, another machine as far as anything can tell. Tests that need it skip where the kernel refuses
(no root, no user namespaces), and say so.

Every process logs its steps with wall-clock times (one kernel, one clock); a "publish" is logged only
after the fence (``RepoLock.still_held``) said yes. The checks are on outcomes: who held, who
published while another held (must be nobody), how long a takeover took.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _machines import REFUSED

HERE = Path(__file__).resolve().parent
PROC = HERE / "_machine_proc.py"
TTL = 1.0
#: Rounds of each race in the suite; `make soak` runs five (the `soak` marked ones).
REPEATS = 2
SOAK_REPEATS = 5

pytestmark = pytest.mark.slow


needs_machines = pytest.mark.skipif(REFUSED is not None, reason=REFUSED or "")


class Cluster:
    """Processes on simulated machines sharing one cache folder, and their merged event log."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.cache = root / "cache"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.events = root / "events.jsonl"
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def machine(self, name: str, *, hidepid: bool = False, uid: int | None = None) -> list[str]:
        """The argv prefix that runs a command on machine ``name`` (its own boot id)."""
        boot = self.root / f"boot_id-{name}"
        boot.write_text(f"{uuid.uuid5(uuid.NAMESPACE_DNS, name + str(self.root))}\n")
        boot.chmod(0o644)
        script = f"mount --bind {boot} /proc/sys/kernel/random/boot_id"
        if hidepid:
            script = f"mount -t proc -o hidepid=2 proc /proc && {script}"
        drop = f"setpriv --reuid={uid} --regid={uid} --clear-groups " if uid is not None else ""
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'{script} && exec {drop}"$@"',
            "sh",
        ]

    def start(
        self, who: str, mode: str, *, prefix: list[str] | None = None, **cfg: Any
    ) -> subprocess.Popen[bytes]:
        config = {"who": who, "mode": mode, "events": str(self.events), "cache": str(self.cache), "ttl": TTL}
        config.update(cfg)
        proc = subprocess.Popen(
            [*(prefix or []), sys.executable, str(PROC), json.dumps(config)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def read(self) -> list[dict[str, Any]]:
        if not self.events.exists():
            return []
        text = self.events.read_text()
        complete = text[: text.rfind("\n") + 1]  # a line being written right now is read next time
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def wait_for(self, who: str, event: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.read():
                if e["who"] == who and e["event"] == event:
                    return e
            for proc in self.procs:
                if proc.poll() not in (None, 0):
                    raise AssertionError(
                        f"a process failed: {proc.stderr.read().decode()[-3000:] if proc.stderr else ''}"
                    )
            time.sleep(0.01)
        raise AssertionError(f"{who} never logged {event!r} within {timeout} s: {self.read()[-10:]}")

    def join(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise AssertionError(f"process {proc.pid} outlived {timeout} s") from None
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            assert proc.returncode == 0, err[-3000:]

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with _suppress():
                    os.killpg(proc.pid, signal.SIGCONT)
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], ProcessLookupError)  # type: ignore[arg-type]


def overlaps(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Pairs of processes whose publishing windows intersect: must be none.

    A window runs from the first to the last fenced publish of one acquisition, each publish being the
    interval in which the fence (``RepoLock.still_held``) was asked and said yes. A holder frozen while
    another took over decides nothing meanwhile, and decides nothing after it thaws: its window ends
    before the next holder's begins. (What the fence cannot close is a holder frozen between a "yes"
    and the write itself; that write lands later. Correctness there rests on what is published being
    content-addressed and verified, not on the lock.)
    """
    windows: list[tuple[str, float, float]] = []
    current: dict[str, list[float]] = {}
    for e in sorted(events, key=lambda e: e["t"]):
        who = e["who"]
        if e["event"] == "publish":
            span = current.setdefault(who, [e["before"], e["checked"]])
            span[1] = e["checked"]
        elif e["event"] in ("released", "lost") and who in current:
            a, b = current.pop(who)
            windows.append((who, a, b))
    windows += [(who, a, b) for who, (a, b) in current.items()]
    return [
        (w1, w2)
        for i, (w1, a1, b1) in enumerate(windows)
        for (w2, a2, b2) in windows[i + 1 :]
        if w1 != w2 and a1 < b2 and a2 < b1
    ]


@pytest.fixture
def cluster(hf_env: dict[str, str]) -> Iterator[Cluster]:
    # Outside pytest's private tmp folder: another uid must reach it (the hidepid case).
    root = Path(tempfile.mkdtemp(prefix="hub-prefetch-machines-"))
    root.chmod(0o777)
    env = {**hf_env, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    c = Cluster(root, env)
    try:
        yield c
    finally:
        c.kill_all()
        shutil.rmtree(root, ignore_errors=True)


# -- machine identity -------------------------------------------------------------------------------


@needs_machines
@pytest.mark.parametrize(
    "round_",
    [*range(REPEATS), *(pytest.param(r, marks=pytest.mark.soak) for r in range(REPEATS, SOAK_REPEATS))],
)
def test_same_host_name_on_two_machines_is_never_evicted_while_heartbeating(
    cluster: Cluster, round_: int
) -> None:
    """Cloned images all say the same host name: B must wait for A's heartbeat, not judge A's pid."""
    stop = cluster.root / "stop-A"
    a = cluster.start("A", "hold", prefix=cluster.machine("a"), host_id="localhost", stop_file=str(stop))
    cluster.wait_for("A", "acquired")
    cluster.start("B", "hold", prefix=cluster.machine("b"), host_id="localhost", timeout=3 * TTL)
    timeout = cluster.wait_for("B", "timeout", timeout=20)
    assert timeout["waited_s"] >= 3 * TTL
    events = cluster.read()
    assert not any(e["who"] == "B" and e["event"] == "acquired" for e in events), events
    # Now A's machine freezes (its heartbeat stops): B takes over once the heartbeat was silent a TTL.
    os.killpg(a.pid, signal.SIGSTOP)
    frozen_at = time.time()
    cluster.start("C", "hold", prefix=cluster.machine("c"), host_id="localhost", hold_s=0.2)
    got = cluster.wait_for("C", "acquired", timeout=20)
    took = got["t"] - frozen_at
    print(f"\n[same host name, other machine] frozen holder taken over after {took:.2f} s (ttl {TTL:g} s)")
    assert TTL <= took < TTL + 5, took
    os.killpg(a.pid, signal.SIGCONT)
    cluster.wait_for("A", "lost", timeout=20)  # A, thawed, finds the lease taken and stops publishing
    stop.touch()
    cluster.join()
    assert overlaps(cluster.read()) == []


@needs_machines
def test_a_holder_seen_through_hidepid_as_another_user_is_alive(cluster: Cluster) -> None:
    """``kill(pid, 0)`` says EPERM and ``/proc/<pid>`` is hidden: that is a live process, not a dead one."""
    # Two users share the cache, as on a multi-user node: everything they both write is open to both.
    locks = cluster.cache / ".locks" / "hub_prefetch"
    locks.mkdir(parents=True)
    for folder in (cluster.cache, locks.parent, locks):
        folder.chmod(0o777)
    cluster.events.touch()
    cluster.events.chmod(0o666)
    stop = cluster.root / "stop-A"
    cluster.start("A", "hold", prefix=cluster.machine("m", uid=65534), stop_file=str(stop))
    cluster.wait_for("A", "acquired")
    cluster.start("B", "hold", prefix=cluster.machine("m", hidepid=True, uid=1000), timeout=2 * TTL)
    cluster.wait_for("B", "timeout", timeout=20)
    stop.touch()
    cluster.join()
    events = cluster.read()
    assert not any(e["who"] == "B" and e["event"] == "acquired" for e in events)
    assert overlaps(events) == []


# -- no false takeovers ---------------------------------------------------------------------------


@needs_machines
@pytest.mark.parametrize(
    "round_",
    [*range(REPEATS), *(pytest.param(r, marks=pytest.mark.soak) for r in range(REPEATS, SOAK_REPEATS))],
)
def test_holder_and_waiter_frozen_together_past_the_ttl_never_both_hold(
    cluster: Cluster, round_: int
) -> None:
    """An NFS failover stalls both; the waiter resumes first. Its own stall is not the holder's silence."""
    stop = cluster.root / "stop-A"
    a = cluster.start("A", "hold", prefix=cluster.machine("a"), stop_file=str(stop))
    cluster.wait_for("A", "acquired")
    b = cluster.start("B", "hold", prefix=cluster.machine("b"), hold_s=0.2)
    cluster.wait_for("B", "waiting")
    time.sleep(0.3)  # B is polling (a forced state, checked below), not starting up
    for proc in (a, b):
        os.killpg(proc.pid, signal.SIGSTOP)
    time.sleep(2.5 * TTL)
    os.killpg(b.pid, signal.SIGCONT)
    time.sleep(0.5)
    os.killpg(a.pid, signal.SIGCONT)
    time.sleep(2 * TTL)  # A heartbeats again: B must still be waiting
    events = cluster.read()
    assert not any(e["who"] == "B" and e["event"] == "acquired" for e in events), events
    assert not any(e["who"] == "A" and e["event"] == "lost" for e in events), events
    stop.touch()
    cluster.join()
    events = cluster.read()
    assert [e["who"] for e in events if e["event"] == "acquired"] == ["A", "B"]
    print(f"\n[frozen together] acquisitions A then B, publish overlaps {len(overlaps(events))}")
    assert overlaps(events) == []


# -- fencing ----------------------------------------------------------------------------------------


@needs_machines
def test_an_operator_deleting_the_lease_fences_the_holder(cluster: Cluster) -> None:
    stop = cluster.root / "stop-A"
    cluster.start("A", "hold", prefix=cluster.machine("a"), stop_file=str(stop))
    cluster.wait_for("A", "acquired")
    leases = list((cluster.cache / ".locks" / "hub_prefetch").glob("*.lease"))
    assert len(leases) == 1
    leases[0].unlink()
    cluster.start("B", "hold", prefix=cluster.machine("b"), hold_s=1.0)
    cluster.wait_for("A", "lost", timeout=10)
    cluster.wait_for("B", "released", timeout=20)
    stop.touch()
    cluster.join()
    events = cluster.read()
    assert overlaps(events) == []
    epochs = {e["who"]: e["epoch"] for e in events if e["event"] == "acquired"}
    assert epochs["B"] > epochs["A"] >= 1, epochs
