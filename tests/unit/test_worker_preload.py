"""The preload hook every worker shares: HUB_PREFETCH_WORKER_PRELOAD, then preload=, then the target."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub_prefetch.testing.forkpool import ForkedWorkers
from hub_prefetch.testing.harness import PRELOAD_ENV
from hub_prefetch.testing.workers import WorkerError, run_workers
from tests.support.slowfs import ENV as SLOW_REFS

PROBES = "tests.support.probes"
READ_MARKS = {"names": ["HP_PRELOADED"]}
pytestmark = pytest.mark.timeout(60)


def test_spawned_workers_load_env_entries_then_preload_then_the_target() -> None:
    env = {PRELOAD_ENV: f" {PROBES}:mark_a ,", "HP_PRELOADED": None}
    (result,) = run_workers(
        f"{PROBES}:getenv",
        {"names": ["HP_PRELOADED"]},
        n=1,
        env=env,
        preload=[f"{PROBES}:mark_b"],
        timeout=30,
    )
    assert result.ok, result.error
    assert result.value == {"HP_PRELOADED": "a,b"}


def test_forked_workers_share_the_hook() -> None:
    env = {PRELOAD_ENV: f"{PROBES}:mark_a", "HP_PRELOADED": None}
    with ForkedWorkers(
        f"{PROBES}:getenv",
        {"names": ["HP_PRELOADED"]},
        n=2,
        env=env,
        preload=[f"{PROBES}:mark_b"],
        timeout=30,
    ) as pool:
        pool.go()
        results = pool.results()
    assert [r.value for r in results] == [{"HP_PRELOADED": "a,b"}] * 2, [r.error for r in results]


def test_a_preload_entry_that_fails_stops_the_worker_before_ready() -> None:
    with pytest.raises(WorkerError, match="hub_prefetch_no_such_module"):
        run_workers(f"{PROBES}:now", {}, n=1, env={PRELOAD_ENV: "hub_prefetch_no_such_module"}, timeout=30)


def test_the_slow_ref_knob_acts_through_the_hook(tmp_path: Path) -> None:
    """What the tests' ``hf_env`` preloads: writes under ``refs/`` wait, others do not."""
    refs = tmp_path / "refs"
    refs.mkdir()
    env = {PRELOAD_ENV: "tests.support.slowfs:install_from_env", SLOW_REFS: "0.5"}
    kwargs = [{"path": str(refs / "main"), "text": "abc"}, {"path": str(tmp_path / "other"), "text": "abc"}]
    slow, fast = run_workers(f"{PROBES}:timed_write", kwargs, n=2, env=env, timeout=30)
    assert slow.ok and fast.ok, (slow.error, fast.error)
    assert slow.value >= 0.5 > fast.value
    assert (refs / "main").read_text() == "abc"
