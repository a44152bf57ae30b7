"""The worker harness itself: real processes, released together, every outcome reported, bounded."""

from __future__ import annotations

import os
import signal
import time

import pytest

from hub_prefetch.testing.workers import WorkerError, WorkerPool, run_workers

PROBES = "tests.support.probes"
pytestmark = pytest.mark.timeout(60)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_go_releases_every_worker_together_and_not_before() -> None:
    with WorkerPool(f"{PROBES}:now", {}, n=4, env={}, timeout=30) as pool:
        pool.wait_ready()
        # Ready workers must block on GO: give them ample time to (wrongly) run early.
        time.sleep(1.5)
        t_go = pool.go()
        results = pool.results()
    assert all(r.ok for r in results), [r.error for r in results]
    starts = [r.t_start for r in results]
    assert min(starts) >= t_go, "a worker ran before GO"
    # Released together: the spread of the starts is the scheduler's (ms when idle), far below the
    # 1.5 s they were held; the bound leaves room for a loaded 2-core machine.
    assert max(starts) - min(starts) < 1.0, starts
    assert max(starts) - t_go < 1.0


def test_results_carry_values_per_worker_kwargs_and_env() -> None:
    kwargs = [{"names": ["HP_PROBE", "HP_GONE"], "tag": i} for i in range(3)]
    os.environ["HP_GONE"] = "inherited"
    try:
        results = run_workers(
            f"{PROBES}:echo", kwargs, n=3, env={"HP_PROBE": "set-by-caller", "HP_GONE": None}, timeout=30
        )
    finally:
        del os.environ["HP_GONE"]
    assert [r.index for r in results] == [0, 1, 2]
    assert [r.value["tag"] for r in results] == [0, 1, 2]
    env_results = run_workers(
        f"{PROBES}:getenv", {"names": ["HP_PROBE", "HP_GONE"]}, n=1, env={"HP_PROBE": "x", "HP_GONE": None}
    )
    assert env_results[0].value == {"HP_PROBE": "x", "HP_GONE": None}
    assert all(r.returncode == 0 and r.t_end >= r.t_start for r in results)


def test_exception_in_target_is_reported_with_type_and_message() -> None:
    (result,) = run_workers(f"{PROBES}:fail", {"message": "no such shard"}, n=1, env={}, timeout=30)
    assert not result.ok
    assert result.error_type == "ValueError"
    assert result.error == "no such shard"
    assert result.traceback is not None and "ValueError" in result.traceback
    assert result.returncode == 1


def test_stdout_noise_cannot_forge_or_break_the_result() -> None:
    (result,) = run_workers(f"{PROBES}:chatty", {"text": "hello"}, n=1, env={}, timeout=30)
    assert result.ok and result.value == "hello"
    assert "raw fd 1 write" in result.stderr


def test_killed_worker_is_reported_and_others_finish() -> None:
    with WorkerPool(
        f"{PROBES}:sleep", [{"seconds": 0.5}, {"seconds": 60}, {"seconds": 0.5}], n=3, env={}
    ) as pool:
        pool.wait_ready()
        pool.go()
        pool.kill(1)
        results = pool.results(timeout=30)
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error_type == "Killed"
    assert results[1].returncode == -signal.SIGKILL


def test_worker_exiting_without_result_is_a_crash() -> None:
    (result,) = run_workers(f"{PROBES}:exit_hard", {"code": 3}, n=1, env={}, timeout=30)
    assert not result.ok
    assert result.error_type == "Crashed"
    assert result.returncode == 3


def test_timeout_kills_stragglers_in_bounded_time() -> None:
    t0 = time.monotonic()
    with WorkerPool(f"{PROBES}:sleep", {"seconds": 120}, n=2, env={}, timeout=30) as pool:
        pool.wait_ready()
        pool.go()
        results = pool.results(timeout=1.5)
    elapsed = time.monotonic() - t0
    assert elapsed < 20
    assert all(r.error_type == "Timeout" and r.returncode == -signal.SIGKILL for r in results)
    assert not any(_alive(r.pid) for r in results if r.pid is not None)


def test_unserialisable_value_is_an_error_not_a_hang() -> None:
    (result,) = run_workers(f"{PROBES}:unserialisable", {}, n=1, env={}, timeout=30)
    assert not result.ok and result.error_type == "TypeError"


def test_bad_target_fails_fast_at_start() -> None:
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="no_such_module"):
        run_workers("no_such_module:f", {}, n=2, env={}, timeout=30)
    assert time.monotonic() - t0 < 20
    with pytest.raises(ValueError, match="module:function"):
        WorkerPool("no_colon", {}, n=1, env={})


def test_rounds_reuse_the_processes_with_new_kwargs() -> None:
    with WorkerPool(f"{PROBES}:echo", {"round": 0}, n=3, env={}, timeout=30) as pool:
        pids = pool.pids
        pool.wait_ready()
        pool.go()
        first = pool.round_results()
        pool.next_round([{"round": 1, "worker": i} for i in range(3)])
        pool.wait_ready()
        t_go = pool.go()
        second = pool.round_results()
        pool.kill(2)
        pool.next_round({"round": 2})
        pool.wait_ready()
        pool.go()
        third = pool.results()
    assert [r.value for r in first] == [{"round": 0}] * 3
    assert [r.value for r in second] == [{"round": 1, "worker": i} for i in range(3)]
    assert all(r.t_start >= t_go for r in second)
    assert [r.pid for r in second] == pids
    assert [r.ok for r in third] == [True, True, False]
    assert third[2].error_type == "Killed"
