"""Turn a run's results into ``results.json``, a markdown report (``README.md``) and two PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

APPROACH_ORDER = ("plain", "reference", "hub-prefetch")
TABLE_COLUMNS = (
    "stack",
    "locks",
    "cache",
    "approach",
    "workers",
    "ok",
    "all-ready s",
    "x alone",
    "x floor",
    "x machine",
    "download s",
    "files ready s",
    "bytes x needed",
    "req/worker rev/tree/head/get/other",
    "metadata req",
    "peak RSS MB",
    "load",
)


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _find(cells: list[dict[str, Any]], **key: Any) -> dict[str, Any] | None:
    for c in cells:
        if all(c.get(k) == v for k, v in key.items()):
            return c
    return None


def _best(c: dict[str, Any]) -> float | None:
    """The fastest repetition of a cell: on a shared machine the least disturbed one."""
    runs = [t for t in c.get("all_ready_all_s") or [c["all_ready_s"]] if t is not None]
    return min(runs) if runs else None


def _baselines(results: dict[str, Any]) -> dict[tuple[str, str], float]:
    """One process loading alone: plain ``from_pretrained``, 1 worker, kernel locks, per stack and cache
    (the fastest repetition)."""
    out = {}
    for c in results["cells"]:
        if c["approach"] == "plain" and c["n"] == 1 and c["locks"] == "kernel" and c["ok"] == 1:
            best = _best(c)
            if best:
                out[(c["stack"], c["cache"])] = best
    return out


def load_time(results: dict[str, Any], stack: str) -> float | None:
    """Seconds one fresh worker needs to load from a warm cache (fastest 1-worker warm run of any
    approach): CPU that every worker spends whatever the approach."""
    times = [
        _best(c)
        for c in results["cells"]
        if c["stack"] == stack and c["n"] == 1 and c["cache"] == "warm" and c["ok"] == 1
    ]
    known = [float(t) for t in times if t]
    return min(known) if known else None


def enrich(results: dict[str, Any]) -> None:
    """Add the ratios to every cell (in place)."""
    base = _baselines(results)
    floor = results.get("floor_s")
    needed = results["repo"]["bytes_needed"]
    cpus = results["machine"]["cpus"] or 1
    results["load_time_s"] = {
        stack: load_time(results, stack) for stack in {c["stack"] for c in results["cells"]}
    }
    for c in results["cells"]:
        ready = c["all_ready_s"]
        alone = base.get((c["stack"], c["cache"]))
        c["x_alone"] = ready / alone if alone and ready is not None else None
        c["x_floor"] = ready / floor if c["cache"] == "cold" and floor and ready is not None else None
        t1 = results["load_time_s"][c["stack"]]
        # One worker uses one CPU (OMP_NUM_THREADS=1): n loads need n/cpus rounds, never less than one.
        cpu_bound = t1 * max(1.0, c["n"] / cpus) if t1 else 0.0
        machine = max(floor if c["cache"] == "cold" and floor else 0.0, cpu_bound)
        c["machine_floor_s"] = machine or None
        c["x_machine"] = ready / machine if machine and ready is not None else None
        c["bytes_ratio"] = c["bytes_served"] / needed if needed else None


def _row(c: dict[str, Any]) -> list[str]:
    n = c["n"]
    per = "/".join(_fmt(c["counts"][k] / n, 1) for k in ("revision", "tree", "head", "get", "other"))
    return [
        c["stack"],
        c["locks"],
        c["cache"],
        c["approach"],
        str(n),
        f"{c['ok']}/{n}",
        _fmt(c["all_ready_s"]),
        _fmt(c["x_alone"]),
        _fmt(c["x_floor"]),
        _fmt(c["x_machine"]),
        _fmt(c["download_s"]),
        _fmt(c.get("files_ready_s")),
        _fmt(c["bytes_ratio"]),
        per,
        str(c["metadata_requests"]),
        _fmt(c["maxrss_mb_max"], 0),
        _fmt(c.get("loadavg"), 1),
    ]


def _table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _sort_key(c: dict[str, Any]) -> tuple[Any, ...]:
    return (
        c["stack"],
        c["locks"],
        c["cache"],
        c["n"],
        APPROACH_ORDER.index(c["approach"]) if c["approach"] in APPROACH_ORDER else 9,
    )


def _targets(results: dict[str, Any]) -> list[list[str]]:
    """The issue's targets for hub-prefetch, each met or missed by how much."""
    rows: list[list[str]] = []
    cells = [c for c in results["cells"] if c["approach"] == "hub-prefetch"]
    micro = results.get("micro", {})
    for stack in sorted({c["stack"] for c in cells}):
        mine = [c for c in cells if c["stack"] == stack]
        cold_k = [c for c in mine if c["cache"] == "cold" and c["locks"] == "kernel"]
        if cold_k:
            top = max(cold_k, key=lambda c: c["n"])
            n = top["n"]

            def check(
                name: str, value: float | None, limit: float, unit: str = "x", *, s: str = stack
            ) -> None:
                if value is None:
                    rows.append([s, name, f"<= {limit:g}{unit}", "-", "not measured"])
                    return
                verdict = "met" if value <= limit + 1e-9 else f"MISSED by {value - limit:.2f}{unit}"
                if value > limit and unit == "x":
                    verdict = f"MISSED by {100 * (value / limit - 1):.0f}%"
                rows.append([s, name, f"<= {limit:g}{unit}", _fmt(value), verdict])

            check(f"cold, {n} workers: all-ready / one process alone", top["x_alone"], 1.1)
            check(f"cold, {n} workers: all-ready / floor (bytes / bandwidth)", top["x_floor"], 1.1)
            check(f"cold, {n} workers: all-ready / machine floor", top["x_machine"], 1.1)
            floor = results.get("floor_s")
            rows.append(
                [
                    stack,
                    f"cold, {n} workers: download phase (GO to last byte) / floor (where the time goes)",
                    "-",
                    _fmt(top["download_s"] / floor if floor else None),
                    "info",
                ]
            )
            ready = top.get("files_ready_s")
            rows.append(
                [
                    stack,
                    f"cold, {n} workers: every worker holding verified files / floor (coordination cost)",
                    "-",
                    _fmt(ready / floor if floor and ready else None),
                    "info",
                ]
            )
            check(f"cold, {n} workers: bytes served / needed", top["bytes_ratio"], 1.0)
            check(f"cold, {n} workers: metadata requests per cache", float(top["metadata_requests"]), 3, "")
        warm = [c for c in mine if c["cache"] == "warm"]
        if warm:
            total = sum(sum(c["counts"].values()) for c in warm)
            rows.append(
                [
                    stack,
                    "warm: Hub requests (all warm cells)",
                    "0",
                    str(total),
                    "met" if total == 0 else "MISSED",
                ]
            )
        pre = micro.get(stack, {}).get("prefetch", {})
        if "median_us" in pre:
            us = float(pre["median_us"])
            rows.append(
                [
                    stack,
                    "warm: overhead per load (prefetch, median)",
                    "< 1000 us",
                    f"{us:.0f} us",
                    "met" if us < 1000 else f"MISSED by {us - 1000:.0f} us",
                ]
            )
        noop = [c for c in mine if c["cache"] == "cold" and c["locks"] == "noop"]
        if noop:
            worst = max(noop, key=lambda c: (c["bytes_ratio"] or 0, c["n"]))
            value = worst["bytes_ratio"]
            verdict = "met" if value is not None and value <= 1.0 + 1e-9 else f"MISSED ({_fmt(value)}x)"
            rows.append(
                [
                    stack,
                    f"no-op locks: bytes served / needed (worst, {worst['n']} workers)",
                    "1.00x",
                    _fmt(value),
                    verdict,
                ]
            )
        failed = sum(c["n"] - c["ok"] for c in mine)
        rows.append(
            [
                stack,
                "failed loads (every hub-prefetch cell)",
                "0",
                str(failed),
                "met" if not failed else "MISSED",
            ]
        )
    return rows


def _micro_table(results: dict[str, Any]) -> str:
    rows = []
    labels = {
        "prefetch": "hub_prefetch.prefetch() on a warm cache (the added step)",
        "pinned_load": "from_pretrained(revision=<commit>, local_files_only=True): the pinned load",
        "hub-prefetch": "from_pretrained_with_prefetch(AutoModel.from_pretrained, ...) warm, total",
        "plain": "plain AutoModel.from_pretrained(...) warm",
        "snapshot_download": "snapshot_download(allow_patterns=...) warm (the reference's per-worker step)",
    }
    for stack, micro in sorted(results.get("micro", {}).items()):
        for key, label in labels.items():
            v = micro.get(key, {})
            if "median_us" not in v:
                rows.append([stack, label, "-", "-", "-", v.get("error", "not run")])
                continue
            rows.append(
                [
                    stack,
                    label,
                    f"{v['median_us'] / 1000:.3f}",
                    f"{v['p90_us'] / 1000:.3f}",
                    str(v["n"]),
                    _fmt(v.get("requests_per_call"), 2),
                ]
            )
    return _table(["stack", "call", "median ms", "p90 ms", "calls", "Hub requests / call"], rows)


def _lock_table(results: dict[str, Any]) -> str:
    rows = []
    for stack, micro in sorted(results.get("micro", {}).items()):
        for backend in ("flock", "lease", "reference-flock"):
            v = micro.get(f"lock_cost:{backend}", {})
            if "median_us" in v:
                rows.append([stack, backend, _fmt(v["median_us"], 1), _fmt(v["min_us"], 1), str(v["n"])])
            elif v:
                rows.append([stack, backend, "-", "-", v.get("error", "")])
    return _table(["stack", "backend", "median us", "best us", "cycles"], rows)


def markdown(results: dict[str, Any]) -> str:
    repo = results["repo"]
    s = results["settings"]
    cells = sorted(results["cells"], key=_sort_key)
    out = [f"# hub-prefetch benchmarks ({results['mode']} mode)", ""]
    out.append(
        f"Run {results['started']}, {results['duration_s']:.0f} s. Regenerate: `make bench` "
        "(quick) or `make bench-full`."
    )
    out.append("")
    out.append("## Setup")
    la0, la1 = results.get("loadavg_start", [0.0])[0], results.get("loadavg_end", [0.0])[0]
    out.append(
        f"- Machine: {results['machine']['cpus']} CPUs, {results['machine']['platform']}; load average "
        f"{la0:.1f} at the start, {la1:.1f} at the end (column `load`: at each cell's start; anything above "
        "the CPU count means other work competed with the workers)."
    )
    for stack, v in sorted(results["stacks"].items()):
        out.append(
            f"- Stack `{stack}`: Python {v['python_version'] if 'python_version' in v else v.get('python')}, "
            f"huggingface_hub {v['huggingface_hub']}, transformers {v['transformers']}, torch {v['torch']}, "
            f"hub_prefetch {v['hub_prefetch']}."
        )
    for skip in results.get("skipped", []):
        out.append(f"- Skipped {skip.get('stack') or skip.get('cell')}: {skip['reason']}.")
    out.append(
        f"- Local Hub in its own process, one {s['bandwidth_bytes_per_s'] / 1e6:g} MB/s link shared by all "
        f"responses. Repo `{repo['repo_id']}`: a load of `{repo['subfolder']}` needs "
        f"{repo['bytes_needed'] / 1e6:.2f} MB ({repo['shards']} safetensors shards + config + index); the "
        f"repo holds {repo['bytes_repo'] / 1e6:.2f} MB"
        + (
            " (with the legacy `pytorch_model.bin` copy many real repos carry, and a second component)."
            if repo["legacy_bin"]
            else " (with a second component)."
        )
    )
    out.append(
        f"- Floor = bytes needed / bandwidth = {results['floor_s']:.2f} s. Machine floor = max(floor, t1 x "
        "max(1, workers / CPUs)), t1 = the fastest 1-worker warm load ("
        + ", ".join(f"{k}: {_fmt(v)} s" for k, v in sorted(results.get("load_time_s", {}).items()))
        + "): the CPU time every approach must spend, whatever it does with the network."
    )
    out.append(
        "- Workers: real processes forked from one host per stack that imported torch, transformers, "
        "huggingface_hub and hub_prefetch before GO (imports are not timed, for every approach alike), "
        "released together; each loads with a real `AutoModel.from_pretrained` and checks the tensors' "
        "fingerprint. All-ready = last worker done - GO. Download = last file byte served - GO (server log). "
        "Files ready = last worker holding its files, before its load proper - GO (reference: after its "
        "locked snapshot_download; hub-prefetch: when the verified prefetch hands over; plain: one call, -)."
    )
    out.append(
        "- Approaches: `plain` = `AutoModel.from_pretrained(repo, subfolder=...)`; `reference` = blocking "
        "`flock` per repo id around `snapshot_download(allow_patterns=[sub/*, sub/**, *.json, *.txt])`, then "
        "the plain load; `hub-prefetch` = `from_pretrained_with_prefetch(AutoModel.from_pretrained, ...)` "
        "(`HUB_PREFETCH_LOCK=auto`)."
    )
    out.append(
        "- Locks: `kernel` = working `flock`; `noop` = `fcntl.flock` replaced in every worker by a no-op "
        "that succeeds (as on some network filesystems); hub-prefetch's probe then picks its lease backend."
    )
    out.append(
        "- x alone = all-ready / (plain, 1 worker, kernel locks, same cache state; fastest of its "
        "repetitions). Warm = a second run of fresh workers over the cache the cold run of the same cell "
        "left. 1-worker kernel-lock cells are repeated (median shown); other cells run once."
    )
    out.append("")
    out.append("## Targets (hub-prefetch)")
    out.append(_table(["stack", "target", "limit", "measured", "verdict"], _targets(results)))
    out.append("")
    out.append("## Cells")
    out.append(_table(TABLE_COLUMNS, [_row(c) for c in cells]))
    out.append("")
    out.append("![time to all-ready](time_to_all_ready.png)")
    out.append("![bytes served](bytes_served.png)")
    out.append("")
    out.append("## Warm path, one process (no bandwidth limit)")
    out.append(_micro_table(results))
    out.append("")
    out.append("## Uncontended lock cost (acquire + release)")
    out.append(
        "`flock` and `lease`: `hub_prefetch.RepoLock` per backend, median of 5 rounds "
        "(`benchmarks/lock_cost.py`); `reference-flock`: the reference's open + `flock` + unlock + close."
    )
    out.append("")
    out.append(_lock_table(results))
    out.append("")
    return "\n".join(out)


def draw_plots(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = results["cells"]
    stacks = sorted({c["stack"] for c in cells})
    locks = [lk for lk in ("kernel", "noop") if any(c["locks"] == lk for c in cells)]
    caches = [ch for ch in ("cold", "warm") if any(c["cache"] == ch for c in cells)]
    styles = {"new": "-", "old": "--"}
    colors = {"plain": "tab:red", "reference": "tab:orange", "hub-prefetch": "tab:green"}
    written: list[Path] = []
    if not cells:
        return written

    def series(**key: Any) -> list[dict[str, Any]]:
        return sorted((c for c in cells if all(c[k] == v for k, v in key.items())), key=lambda c: c["n"])

    def draw(ax: Any, metric: str, *, clamp: float = 1e-3, **key: Any) -> None:
        """One line per stack and approach; cells with failed loads get a black cross. Values below
        ``clamp`` (a run whose workers died before fetching much) are drawn at ``clamp``."""
        for stack in stacks:
            for approach in APPROACH_ORDER:
                cs = [c for c in series(stack=stack, approach=approach, **key) if c[metric] is not None]
                if not cs:
                    continue
                xs, ys = [c["n"] for c in cs], [max(c[metric], clamp) for c in cs]
                ax.plot(
                    xs,
                    ys,
                    styles.get(stack, ":"),
                    marker="o",
                    color=colors[approach],
                    label=f"{approach} ({stack})",
                )
                bad = [(c["n"], max(c[metric], clamp)) for c in cs if c["ok"] < c["n"]]
                if bad:
                    ax.plot(*zip(*bad, strict=True), "x", color="black", ms=10, mew=2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(workers, [str(n) for n in workers])
        ax.set_xlabel("workers")
        ax.grid(True, which="both", alpha=0.3)

    workers = sorted({c["n"] for c in cells})
    fig, axes = plt.subplots(
        len(caches), len(locks), figsize=(5 * len(locks), 3.6 * len(caches)), squeeze=False
    )
    for i, cache in enumerate(caches):
        for j, lk in enumerate(locks):
            ax = axes[i][j]
            draw(ax, "all_ready_s", locks=lk, cache=cache)
            if cache == "cold" and results.get("floor_s"):
                ax.axhline(
                    results["floor_s"], color="grey", lw=0.8, ls=":", label="floor (bytes / bandwidth)"
                )
            ax.set_title(f"{cache} cache, {lk} locks")
            ax.set_ylabel("time to all-ready (s)")
    axes[0][0].legend(fontsize=7, title="x = some loads failed", title_fontsize=7)
    fig.tight_layout()
    path = out / "time_to_all_ready.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, axes = plt.subplots(1, len(locks), figsize=(5 * len(locks), 3.6), squeeze=False)
    for j, lk in enumerate(locks):
        ax = axes[0][j]
        draw(ax, "bytes_ratio", clamp=0.5, locks=lk, cache="cold")
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_title(f"cold cache, {lk} locks")
        ax.set_ylabel("bytes served / bytes needed (min 0.5)")
    axes[0][0].legend(fontsize=7, title="x = some loads failed", title_fontsize=7)
    fig.tight_layout()
    path = out / "bytes_served.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def write_report(results: dict[str, Any], out: Path, *, plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    enrich(results)
    written = []
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=1, sort_keys=True))
    written.append(path)
    path = out / "README.md"
    from .engine_report import kept_section, splice

    text = markdown(results)
    engine = kept_section(out)  # the engine benchmark's section, written by benchmarks.engine
    path.write_text(splice(text, engine) if engine else text)
    written.append(path)
    if plots:
        written += draw_plots(results, out)
    return written
