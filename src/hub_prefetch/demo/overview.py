"""What ``hub-prefetch demo`` runs without flags: every scenario that matters, plain against hub-prefetch.

One plain and one protected zygote (:mod:`hub_prefetch.testing.forkpool`) import torch and transformers
once; every scenario then forks its ``N`` workers from them, on a fresh cache, with the scenario's fault
injected (:mod:`.faults`): by the local Hub (503s, a stalled shard), from outside (a SIGKILL), or inside
each forked worker (a no-op ``flock``, passed per call). A scenario is one cold run per side, so the
whole overview stays within a couple of minutes on two cores; ``--scenario NAME`` runs one scenario in
depth (several rounds, cold and warm columns).

The several-nodes row has a run shape of its own (:mod:`.nodes`): one torch.distributed job of
simulated nodes, each with its own cache, plain ``from_pretrained`` on every node against
``prefetch_distributed`` (one Hub download per job); it runs after the other rows, once their workers
are gone.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..console import StatusLine, human_bytes, human_seconds
from .faults import FAULTS, NOOP_FLOCK_ENV
from .nodes import NODES, run_nodes
from .runs import RunStats, run_round, start_lanes

if TYPE_CHECKING:
    from ..testing import LocalHub

__all__ = ["SCENARIOS", "Scenario", "ScenarioResult", "render_overview", "run_overview"]


@dataclass(frozen=True)
class Scenario:
    """One row pair of the overview: a fault, injected the same way into the plain and the protected run."""

    name: str
    fault: str
    description: str
    cold: bool = True
    #: Environment for each forked worker of this scenario (applied in the worker, per call).
    env: dict[str, str] = field(default_factory=dict)
    #: The scenario whose caches a warm scenario loads from again (they must run before it).
    reuses: str | None = None
    #: Simulated nodes of a several-nodes job (:mod:`.nodes`, one rank and one cache each); 0: one cache.
    nodes: int = 0


#: The overview's scenarios, in the order they run and are printed.
SCENARIOS: tuple[Scenario, ...] = (
    Scenario("none", "none", FAULTS["none"].description),
    Scenario(
        "warm",
        "none",
        "the same workers again on the now-warm caches of the first row",
        cold=False,
        reuses="none",
    ),
    Scenario("http-503", "http-503", FAULTS["http-503"].description),
    Scenario("killed-downloader", "killed-downloader", FAULTS["killed-downloader"].description),
    Scenario("noop-flock", "noop-flock", FAULTS["noop-flock"].description, env={NOOP_FLOCK_ENV: "1"}),
    Scenario(
        "several-nodes",
        "none",
        f"a torch.distributed job of {NODES} simulated nodes x 1 rank, each node its own cache (gloo)",
        nodes=NODES,
    ),
)


@dataclass
class ScenarioResult:
    """The two runs of one scenario."""

    scenario: Scenario
    plain: RunStats
    protected: RunStats

    @property
    def sides(self) -> tuple[tuple[str, RunStats], tuple[str, RunStats]]:
        return (("plain", self.plain), ("hub-prefetch", self.protected))


def run_overview(
    hub: LocalHub,
    root: Path,
    *,
    workers: int,
    fingerprint: str,
    needed: int,
    status: StatusLine,
    rounds: int = 1,
    scenarios: tuple[Scenario, ...] = SCENARIOS,
) -> list[ScenarioResult]:
    """Run every scenario ``rounds`` times per side (plain, then hub-prefetch), each cold run on a fresh
    cache, one after the other on one Hub; a warm scenario runs once, on the caches it reuses."""
    n = workers
    results: list[ScenarioResult] = []
    jobs = [s for s in scenarios if s.nodes]
    scenarios = tuple(s for s in scenarios if not s.nodes)
    total = len(scenarios) + len(jobs)
    with contextlib.ExitStack() as stack:
        status.waiting(f"starting {n} plain and {n} protected workers (one interpreter each, forked)")
        first = scenarios[0]
        lanes = start_lanes(
            hub,
            root,
            stack,
            workers=n,
            envs={},
            first_kwargs={"plain": first.env, "protected": first.env},
        )
        caches: dict[str, int] = {}
        slot = 0
        forked = False  # the first run's workers were forked by start_lanes
        for index, scenario in enumerate(scenarios):
            stats = {target: RunStats(name=f"{scenario.name}: {target}", workers=n) for target in lanes}
            runs = rounds if scenario.cold else 1
            for round_ in range(runs):
                cache = caches[scenario.reuses] if scenario.reuses else slot
                caches[scenario.name] = cache
                for target, lane in lanes.items():
                    status.waiting(
                        f"{index + 1}/{total} {scenario.name}: {n} {target} workers loading"
                        + (f" (run {round_ + 1} of {runs})" if runs > 1 else "")
                    )
                    run_round(
                        lane,
                        stats[target],
                        hub=hub,
                        cache=lane.cache(cache),
                        fault=scenario.fault,
                        cold=scenario.cold,
                        fingerprint=fingerprint,
                        first=not forked,
                        env=scenario.env,
                    )
                forked = True
                slot += 0 if scenario.reuses else 1
            for target in lanes:
                stats[target].bytes_needed = needed * stats[target].rounds if scenario.cold else 0
            results.append(ScenarioResult(scenario, stats["plain"], stats["protected"]))
    for scenario in jobs:  # after the lanes' workers are gone: these ranks need the cores and memory
        label = f"{len(results) + 1}/{len(scenarios) + len(jobs)} {scenario.name}"
        plain, protected = run_nodes(
            hub,
            root,
            nodes=scenario.nodes,
            fingerprint=fingerprint,
            needed=needed,
            status=status,
            label=label,
        )
        results.append(ScenarioResult(scenario, plain, protected))
    return results


# ------------------------------------------------------------------------------------------ the table


def failed_cell(stats: RunStats) -> str:
    alive = stats.workers * stats.rounds - stats.killed
    text = f"{stats.failed + stats.wrong_weights} of {alive}"
    return text + (f" (+{stats.killed} killed)" if stats.killed else "")


def time_cell(stats: RunStats) -> str:
    loaded = stats.all_loaded_s
    if loaded is None:
        return f"never (last ended at {human_seconds(stats.last_done_s)})"
    return human_seconds(loaded)


def bytes_cell(stats: RunStats) -> str:
    if not stats.bytes_needed:  # warm: nothing needs to come over the network
        return f"{human_bytes(stats.bytes_served)} / 0 B"
    ratio = stats.bytes_served / stats.bytes_needed
    return f"{human_bytes(stats.bytes_served)} / {human_bytes(stats.bytes_needed)} ({ratio:.1f}x)"


COLUMNS = (
    "scenario",
    "loader",
    "failed workers",
    "time until all loaded",
    "bytes served / needed",
    "Hub requests",
    "temp files left",
)


def render_overview(results: list[ScenarioResult]) -> str:
    """The overview table: two lines per scenario (plain, then hub-prefetch)."""
    body: list[list[str]] = []
    for result in results:
        for i, (side, stats) in enumerate(result.sides):
            body.append(
                [
                    result.scenario.name if i == 0 else "",
                    side,
                    failed_cell(stats),
                    time_cell(stats),
                    bytes_cell(stats),
                    str(stats.hub_requests),
                    str(stats.temp_files),
                ]
            )
    rows = [list(COLUMNS), *body]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
