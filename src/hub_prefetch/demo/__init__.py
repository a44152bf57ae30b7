"""``hub-prefetch demo``: N real worker processes load one model on a cold cache, plain vs hub-prefetch.

Everything runs on this machine: a local Hub (:class:`~hub_prefetch.testing.LocalHub`, in a subprocess,
its link throttled so that downloads take long enough for the race to be real) serving a tiny sharded
BERT built by :func:`~hub_prefetch.testing.build_sharded_model`. Each run forks ``N`` workers from one
interpreter that imported torch and transformers once (:mod:`hub_prefetch.testing.forkpool`) and
releases them at the same instant; each loads ``AutoModel.from_pretrained(repo, subfolder=...)`` and
reports the fingerprint of the tensors it got, so a wrong or partial load counts as a failure.

Without ``--scenario``, the overview (:mod:`.overview`): every scenario once per side (no fault, warm,
Hub 503s, the downloader killed, ``flock`` a no-op, a job over several simulated nodes: :mod:`.nodes`),
one table row each, and the same figures as a PNG
chart (:mod:`.chart`). With ``--scenario NAME`` (or ``--fault NAME``): plain on a cold cache, hub-prefetch
on another cold cache (both under that fault, ``--rounds`` times), then both again on their now-warm
caches. Figures come from the workers' results, the Hub's request log and the cache folders.

This module draws the tables and the report; :mod:`.runs` drives the workers round by round,
:mod:`.faults` names the faults (the CLI's ``--fault`` choices) and injects them from outside the
workers, and :mod:`.targets` holds the worker targets. The demo stands beside the test harness it uses
(:mod:`hub_prefetch.testing`) and never imports the CLI: the CLI imports it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from ..console import StatusLine, human_bytes, human_seconds
from .chart import CHART_SKIPPED, write_chart
from .faults import FAULTS, Fault
from .overview import SCENARIOS, ScenarioResult, render_overview, run_overview
from .runs import REPO_ID, SHARDS, SUBFOLDER, RunStats, needed_bytes, run_lanes

__all__ = ["FAULTS", "SCENARIOS", "Fault", "RunStats", "render_overview", "render_table", "run_demo"]


# ------------------------------------------------------------------------------------------ the table


def _cell(stats: RunStats, row: str) -> str:
    if row == "failed":
        alive = stats.workers * stats.rounds - stats.killed
        text = f"{stats.failed + stats.wrong_weights} of {alive}"
        return text + (f" (+{stats.killed} killed)" if stats.killed else "")
    if row == "time":
        done = [t for t in stats.round_times_s if t is not None]
        never = len(stats.round_times_s) - len(done)
        if not never:
            return human_seconds(float(statistics.median(done)))
        if not done:
            return f"never (last worker ended at {human_seconds(stats.last_done_s)})"
        return f"{human_seconds(float(statistics.median(done)))}; never in {never} of {stats.rounds} runs"
    if row == "bytes":
        ratio = stats.bytes_served / stats.bytes_needed if stats.bytes_needed else 0.0
        return f"{human_bytes(stats.bytes_served)} / {human_bytes(stats.bytes_needed)} ({ratio:.1f}x)"
    if row == "requests":
        return str(stats.hub_requests)
    if row == "temps":
        return str(stats.temp_files)
    raise KeyError(row)


_ROWS = (
    ("failed", "failed workers"),
    ("time", "time until all loaded"),
    ("bytes", "bytes served / needed"),
    ("requests", "Hub requests"),
    ("temps", "temp files left behind"),
)


def render_table(runs: list[RunStats]) -> str:
    header = ["", *[r.name for r in runs]]
    body = [[label, *[_cell(r, key) for r in runs]] for key, label in _ROWS]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_demo(args: argparse.Namespace, *, out: TextIO, err: TextIO, status: StatusLine) -> int:
    """The ``demo`` command; returns 0 when every hub-prefetch worker loaded the right weights."""
    try:
        from ..testing import LocalHub, RepoStore, build_sharded_model  # noqa: PLC0415 - optional extras
    except ImportError as exc:
        err.write(
            f"hub-prefetch demo needs the testing extras ({exc.name} is missing): "
            "pip install 'hub-prefetch[testing,transformers,torch]'\n"
        )
        return 2
    fault = args.fault
    # The overview runs five scenarios; 6 workers each keeps it within about a minute on two cores.
    n = args.workers or (8 if fault else 6)
    rounds = args.rounds or (3 if fault else 1)
    root = Path(tempfile.mkdtemp(prefix="hub-prefetch-demo-"))
    started = time.monotonic()
    runs: list[RunStats] = []
    overview: list[ScenarioResult] = []
    try:
        with status:
            status.waiting("building the tiny sharded model")
            store = RepoStore(root / "store")
            built = build_sharded_model(store, REPO_ID, subfolder=SUBFOLDER, shards=SHARDS)
            needed = needed_bytes(store, REPO_ID, built.commit)
            hub = LocalHub.spawn(store.root)
            try:
                hub.set_bandwidth(args.bandwidth * 1e6 if args.bandwidth > 0 else None)
                if fault:
                    runs = run_lanes(
                        hub,
                        root,
                        workers=n,
                        fault=fault,
                        rounds=rounds,
                        fingerprint=built.fingerprint,
                        needed=needed,
                        status=status,
                    )
                else:
                    overview = run_overview(
                        hub,
                        root,
                        workers=n,
                        rounds=rounds,
                        fingerprint=built.fingerprint,
                        needed=needed,
                        status=status,
                    )
            finally:
                hub.stop()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    link = f"{args.bandwidth:g} MB/s" if args.bandwidth > 0 else "full speed"
    intro = (
        f"hub-prefetch demo: {n} worker processes load {REPO_ID} ({SUBFOLDER}, {SHARDS} shards, "
        f"{human_bytes(needed)}) with AutoModel.from_pretrained"
    )
    if not fault:
        return _report_overview(args, overview, intro, link, needed, started, root, out)
    protected = [r for r in runs if r.name.startswith("hub-prefetch")]
    ok = all(r.failed == 0 and r.wrong_weights == 0 for r in protected)
    code = 0 if ok else 1
    total = time.monotonic() - started
    description = FAULTS[fault].description
    if args.json:
        data = {
            "ok": ok,
            "exit_code": code,
            "command": "demo",
            "workers": n,
            "rounds": rounds,
            "fault": fault,
            "fault_description": description,
            "bandwidth_mb_s": args.bandwidth,
            "repo_id": REPO_ID,
            "subfolder": SUBFOLDER,
            "bytes_needed": needed,
            "runs": [{**asdict(r), "all_loaded_s": r.all_loaded_s} for r in runs],
            "elapsed_s": total,
            "folder": str(root) if args.keep else None,
        }
        out.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        out.flush()
        return code
    lines = [intro, f"local Hub at {link} (no network); fault: {fault} - {description}"]
    if rounds > 1:
        lines.append(f"cold columns: {rounds} runs on fresh caches, summed (time: the median run)")
    lines += ["", render_table(runs), ""]
    for r in runs:
        for message, count in sorted(r.errors.items(), key=lambda kv: -kv[1]):
            lines.append(f"{r.name}: {count} x {message}")
    lock = protected[0].lock_backend if protected else None
    if lock:
        lines.append(f"hub-prefetch: repo lock backend {lock}")
    lines.append(f"done in {human_seconds(total)}" + (f"; files kept in {root}" if args.keep else ""))
    out.write("\n".join(lines) + "\n")
    out.flush()
    return code


def _report_overview(  # noqa: PLR0917 - a private step of run_demo, called once
    args: argparse.Namespace,
    results: list[ScenarioResult],
    intro: str,
    link: str,
    needed: int,
    started: float,
    root: Path,
    out: TextIO,
) -> int:
    ok = all(r.protected.failed == 0 and r.protected.wrong_weights == 0 for r in results)
    code = 0 if ok else 1
    chart: Path | None = None
    chart_note = "chart: not drawn (--no-chart)"
    if not args.no_chart:
        chart = write_chart(results, args.chart, title=f"{intro}\nlocal Hub at {link}")
        chart_note = f"chart: {chart.resolve()}" if chart else CHART_SKIPPED
    total = time.monotonic() - started
    if args.json:
        data = {
            "ok": ok,
            "exit_code": code,
            "command": "demo",
            "workers": results[0].plain.workers if results else 0,
            "rounds": results[0].plain.rounds if results else 0,
            "fault": None,
            "bandwidth_mb_s": args.bandwidth,
            "repo_id": REPO_ID,
            "subfolder": SUBFOLDER,
            "bytes_needed": needed,
            "scenarios": [
                {
                    "name": r.scenario.name,
                    "description": r.scenario.description,
                    "cold": r.scenario.cold,
                    "plain": {**asdict(r.plain), "all_loaded_s": r.plain.all_loaded_s},
                    "hub_prefetch": {**asdict(r.protected), "all_loaded_s": r.protected.all_loaded_s},
                }
                for r in results
            ],
            "chart": str(chart.resolve()) if chart else None,
            "elapsed_s": total,
            "folder": str(root) if args.keep else None,
        }
        out.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        out.flush()
        return code
    lines = [
        intro,
        f"local Hub at {link} (no network); each scenario on fresh caches, plain then hub-prefetch:",
    ]
    lines += [f"  {r.scenario.name:17s}  {r.scenario.description}" for r in results]
    lines += ["", render_overview(results), ""]
    for r in results:
        for side, stats in r.sides:
            for message, count in sorted(stats.errors.items(), key=lambda kv: -kv[1]):
                lines.append(f"{r.scenario.name}, {side}: {count} x {message}")
    backends = sorted({r.protected.lock_backend for r in results if r.protected.lock_backend})
    if backends:
        lines.append(
            "hub-prefetch: repo lock backend "
            + ", ".join(
                f"{r.protected.lock_backend} ({r.scenario.name})" for r in results if r.protected.lock_backend
            )
        )
    lines.append(chart_note)
    lines.append(f"done in {human_seconds(total)}" + (f"; files kept in {root}" if args.keep else ""))
    out.write("\n".join(lines) + "\n")
    out.flush()
    return code
