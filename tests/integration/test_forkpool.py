"""hub_prefetch.testing.forkpool: workers forked from one zygote, round after round (used by the demo)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from hub_prefetch.testing.forkpool import ForkedWorkers
from hub_prefetch.testing.workers import WorkerError

SLEEP = "timeit:timeit"  # timeit(stmt=..., number=1) blocks as long as stmt does, and takes keywords


def sleeping(seconds: float) -> dict[str, object]:
    return {"stmt": f"import time; time.sleep({seconds})", "number": 1}


def test_rounds_fork_fresh_workers_released_together() -> None:
    seen: set[int] = set()
    with ForkedWorkers("os:getpid", {}, n=3, env={}, timeout=60) as pool:
        for round_ in range(3):
            if round_:
                pool.next_round({})
            pids = list(pool.pids)
            assert len(set(pids)) == 3
            assert not seen & set(pids)
            seen |= set(pids)
            t_go = pool.go()
            results = pool.results()
            assert [r.ok for r in results] == [True, True, True]
            assert [r.value for r in results] == pids
            assert all(0 <= r.t_start - t_go < 5 for r in results)
            assert all(r.returncode == 0 for r in results)
    assert os.getpid() not in seen


def test_errors_kills_and_timeouts_become_results() -> None:
    kwargs: list[dict[str, Any]] = [{"s": "{"}, sleeping(60), sleeping(0)]
    with ForkedWorkers("json:loads", kwargs[:1], n=1, env={}, timeout=60) as pool:
        pool.go()
        (bad,) = pool.results()
    assert not bad.ok
    assert bad.error_type == "JSONDecodeError"
    assert "Expecting property name" in (bad.traceback or "")

    with ForkedWorkers(SLEEP, kwargs[1:], n=2, env={}, timeout=60) as pool:
        pool.go()
        pool.kill(0)
        killed, fine = pool.results()
    assert (killed.ok, killed.error_type, killed.returncode) == (False, "Killed", -9)
    assert fine.ok

    pool = ForkedWorkers(SLEEP, sleeping(60), n=1, env={}, timeout=1)  # 1 s for the call itself
    try:
        pool.start(timeout=60)  # start-up may take longer on a busy machine
        pool.go()
        (slow,) = pool.results()
    finally:
        pool.close()
    assert (slow.ok, slow.error_type) == (False, "Timeout")


def test_a_target_that_cannot_be_imported_fails_start() -> None:
    with (
        pytest.raises(WorkerError, match="no_such_module"),
        ForkedWorkers("no_such_module:f", {}, n=1, env={}, timeout=30),
    ):
        pass


def test_environment_reaches_the_workers() -> None:
    with ForkedWorkers(
        "os:getenv",
        {"key": "HUB_PREFETCH_FORKPOOL_PROBE"},
        n=2,
        env={"HUB_PREFETCH_FORKPOOL_PROBE": "yes"},
        timeout=30,
    ) as pool:
        pool.go()
        assert [r.value for r in pool.results()] == ["yes", "yes"]
