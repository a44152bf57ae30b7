"""The engine benchmark's results: ``engine.json``, a section of ``README.md`` between markers (kept when
:mod:`benchmarks.report` rewrites the rest) and ``engine.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .report import _fmt, _table

__all__ = ["engine_section", "write_engine_report"]

BEGIN, END = "<!-- engine benchmark -->", "<!-- end engine benchmark -->"
BASELINE = "hf download"
MB = 1_000_000


def _rows(results: dict[str, Any], cell: str, **key: Any) -> list[dict[str, Any]]:
    return [r for r in results["rows"] if r["cell"] == cell and all(r.get(k) == v for k, v in key.items())]


def _one(results: dict[str, Any], cell: str, **key: Any) -> dict[str, Any] | None:
    rows = _rows(results, cell, **key)
    return rows[0] if rows else None


def _rate(r: dict[str, Any]) -> float | None:
    """Bytes per second over the file bodies (first GET to last byte, from the server's log)."""
    w = r.get("get_window_s")
    return r["bytes_served"] / w if w else None


def enrich(results: dict[str, Any]) -> None:
    """Ratios against ``hf download`` in the same run and cell (in place)."""
    for r in results["rows"]:
        if r["cell"] in ("cold", "shared", "per-connection", "rss"):
            base = _one(results, r["cell"], stack=r["stack"], repo=r["repo"], method=BASELINE)
            ok = base is not None and base["rc"] == 0 and r["rc"] == 0
            r["x_upstream"] = r["wall_s"] / base["wall_s"] if ok and base else None
            r["rate_mb_s"] = (_rate(r) or 0) / MB or None
            r["rate_wall_mb_s"] = r["needed"] / r["wall_s"] / MB
            if r["cell"] == "shared":
                r["x_floor"] = r["wall_s"] / r["floor_s"]
                r["x_floor_bodies"] = (r["get_window_s"] or 0) / r["floor_s"] or None
            if r["cell"] == "per-connection" and ok and base:
                r["x_one_stream"] = (_rate(r) or 0) / (_rate(base) or 1)
                r["x_one_stream_wall"] = base["wall_s"] / r["wall_s"]


def _verdict(value: float | None, limit: float, *, at_least: bool = False) -> str:
    if value is None:
        return "not measured"
    ok = value >= limit if at_least else value <= limit + 1e-9
    return "met" if ok else "MISSED"


def targets(results: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    stacks = sorted({r["stack"] for r in results["rows"]})
    for s in stacks:
        for name in ("large", "many"):
            e = _one(results, "cold", stack=s, repo_name=name, method="engine")
            if e:
                rows.append(
                    [
                        s,
                        f"cold {name}: engine / hf download",
                        "<= 1.00x",
                        _fmt(e["x_upstream"]),
                        _verdict(e["x_upstream"], 1.0),
                    ]
                )
                rows.append(
                    [
                        s,
                        f"cold {name}: metadata requests per cache",
                        "1",
                        str(e["metadata_requests"]),
                        _verdict(float(e["metadata_requests"]), 1),
                    ]
                )
                rows.append(
                    [
                        s,
                        f"cold {name}: HEAD requests",
                        "0",
                        str(e["counts"]["head"]),
                        _verdict(float(e["counts"]["head"]), 0),
                    ]
                )
            e = _one(results, "shared", stack=s, repo_name=name, method="engine")
            if e:
                rows.append(
                    [
                        s,
                        f"shared link {e['rate'] / MB:g} MB/s, {name}: wall / floor",
                        "<= 1.05x",
                        _fmt(e["x_floor"]),
                        _verdict(e["x_floor"], 1.05),
                    ]
                )
                base = _one(results, "shared", stack=s, repo_name=name, method=BASELINE)
                raw = _one(results, "shared", stack=s, repo_name=name, method="raw GETs")
                rows.append(
                    [
                        s,
                        (
                            f"shared link, {name}: bodies only (first GET to last byte) / floor; "
                            f"hf download: {_fmt(base.get('x_floor_bodies') if base else None)}"
                        ),
                        "info",
                        _fmt(e.get("x_floor_bodies")),
                        "-",
                    ]
                )
                if raw:
                    rows.append(
                        [
                            s,
                            (
                                f"shared link, {name}: raw GETs (8 urllib threads, bytes dropped) wall / "
                                "floor: what this machine and local Hub deliver at best"
                            ),
                            "info",
                            _fmt(raw["x_floor"]),
                            "-",
                        ]
                    )
        e = _one(results, "per-connection", stack=s, method="engine")
        if e:
            rows.append(
                [
                    s,
                    f"{e['rate'] / MB:g} MB/s per connection: engine rate / one stream's (bodies)",
                    ">= 3x",
                    _fmt(e.get("x_one_stream")),
                    _verdict(e.get("x_one_stream"), 3, at_least=True),
                ]
            )
        for cell, limit, what in (
            ("kill", 1.02, "SIGKILL half-way"),
            ("cut", 1.01, "connection cut at 200 kB"),
        ):
            e = _one(results, cell, stack=s, method="engine")
            if e:
                rows.append(
                    [
                        s,
                        f"{what}: bytes served / needed",
                        f"<= {limit}x",
                        _fmt(e["ratio"], 3),
                        _verdict(e["ratio"], limit),
                    ]
                )
        rss = [
            r
            for r in results["rows"]
            if r["stack"] == s
            and r.get("method") == "engine"
            and r["cell"] in ("cold", "rss")
            and r.get("repo_name") in ("large", "one")
        ]
        if len(rss) >= 2:
            lo, hi = min(r["rss_mb"] for r in rss), max(r["rss_mb"] for r in rss)
            rows.append(
                [
                    s,
                    "engine peak RSS, largest / smallest file size",
                    "~1x",
                    _fmt(hi / lo),
                    "met" if hi / lo < 1.2 else "MISSED",
                ]
            )
        w = _one(results, "warm-path", stack=s, files=256)
        if w and "median_us" in w:
            rows.append(
                [
                    s,
                    "warm path per call, 256 files (median)",
                    "< 1000 us",
                    f"{w['median_us']:.0f} us",
                    "met" if w["median_us"] < 1000 else "MISSED",
                ]
            )
    return rows


def _reqs(r: dict[str, Any]) -> str:
    c = r["counts"]
    return "/".join(str(c[k]) for k in ("revision", "tree", "head", "get", "other"))


def engine_section(results: dict[str, Any]) -> str:
    enrich(results)
    repos = results["repos"]
    out = [BEGIN, f"## Download engine ({results['mode']} mode, `python -m benchmarks.engine`)", ""]
    out.append(
        f"Run {results['started']}, {results['duration_s']:.0f} s, load average "
        f"{results['loadavg_start'][0]:.1f} -> {results['loadavg_end'][0]:.1f} on "
        f"{results['machine']['cpus']} CPUs. Stacks: "
        + ", ".join(
            f"`{k}` huggingface_hub {v['huggingface_hub']}" for k, v in sorted(results["stacks"].items())
        )
        + ". Repos (random bytes): "
        + ", ".join(f"`{v['repo_id']}` {v['files']} files {v['bytes'] / MB:.1f} MB" for v in repos.values())
        + "."
    )
    out.append("")
    out.append(
        "Each run is a CLI process over a fresh cache, timed spawn to exit (imports included): `engine` = "
        "`hub-prefetch warm --all`; `hf-engine` = the same with `HUB_PREFETCH_ENGINE=huggingface_hub`; "
        "`hf download` = huggingface_hub's CLI, the same files, the baseline of `x upstream`. Requests are "
        "revision/tree/HEAD/GET/other from the server log; body rate = bytes / (first GET to last byte). "
        f"Cold runs: fastest of {results['settings']['reps']}, all listed. Peak RSS = the downloading "
        "process's `VmHWM`; CPU s = its user + system time; load = the 1-minute load average as the run "
        "started (above the CPU count, other work competed with the run and the local Hub) / the share of "
        "the last 10 s in which some task waited for a CPU (`/proc/pressure/cpu`)."
    )
    for name, v in sorted(results["stacks"].items()):
        if v.get("baseline", "hf download") != "hf download":
            out.append("")
            out.append(f"On stack `{name}` the `hf download` column is {v['baseline']}.")
    out.append("")
    out.append("### Targets (engine)")
    out.append(_table(["stack", "target", "limit", "measured", "verdict"], targets(results)))
    out.append("")
    out.append("### Cold, throttled, per-connection, RSS")
    rows = []
    for r in results["rows"]:
        if r["cell"] not in ("cold", "shared", "per-connection", "rss"):
            continue
        rows.append(
            [
                r["cell"] + (f" {r['rate'] / MB:g} MB/s" if r.get("rate") else ""),
                r["stack"],
                r.get("repo_name", ""),
                r["method"],
                str(r["rc"]),
                _fmt(r["wall_s"])
                + (
                    " (" + ", ".join(_fmt(w) for w in r["walls_s"]) + ")"
                    if len(r.get("walls_s", [])) > 1
                    else ""
                ),
                _fmt(r.get("x_upstream")),
                _fmt(r.get("x_floor")),
                _fmt(r.get("rate_mb_s"), 0),
                _reqs(r),
                str(r["range_gets"]),
                str(r.get("max_inflight_gets", "-")),
                _fmt(r.get("first_request_to_first_get_s")),
                _fmt(r["bytes_served"] / r["needed"], 3),
                _fmt(r["rss_mb"], 0),
                _fmt(r.get("cpu_s")),
                _fmt(r.get("load"), 1)
                + (f" / {r['cpu_pressure']:.0f}%" if r.get("cpu_pressure") is not None else ""),
            ]
        )
    header = [
        "cell",
        "stack",
        "repo",
        "method",
        "rc",
        "wall s",
        "x upstream",
        "x floor",
        "body MB/s",
        "req rev/tree/head/get/other",
        "range GETs",
        "GETs in flight (max)",
        "1st request to 1st GET s",
        "bytes x needed",
        "peak RSS MB",
        "CPU s",
        "load / CPU pressure",
    ]
    out.append(_table(header, rows))
    out.append("")
    out.append("### Interrupted downloads (bytes served over both runs / needed)")
    rows = []
    for r in results["rows"]:
        if r["cell"] == "kill":
            rows.append(
                [
                    "SIGKILL at half, then again",
                    r["stack"],
                    r["method"],
                    str(r["rc"]),
                    f"{r['killed_at_big'] / MB:.1f}",
                    f"{r['bytes_served'] / MB:.1f}",
                    _fmt(r["ratio"], 3),
                ]
            )
        elif r["cell"] == "cut":
            rows.append(
                [
                    "connection cut at 200 kB",
                    r["stack"],
                    r["method"],
                    str(r["rc"]),
                    "0.2",
                    f"{r['bytes_served'] / MB:.1f}",
                    _fmt(r["ratio"], 3),
                ]
            )
    out.append(_table(["fault", "stack", "method", "rc", "cut at MB", "served MB", "x needed"], rows))
    out.append("")
    out.append("### Warm path (`hub_prefetch.prefetch(all_files=True)` on a warm cache, one process)")
    rows = [
        [
            r["stack"],
            str(r.get("files", "-")),
            _fmt(r.get("median_us"), 0),
            _fmt(r.get("p90_us"), 0),
            _fmt(r.get("min_us"), 0),
            str(r.get("n", "-")),
            str(r.get("hub_requests", "-")),
        ]
        for r in _rows(results, "warm-path")
    ]
    out.append(
        _table(
            ["stack", "files", "median us", "p90 us", "best us", "calls", "Hub requests (all calls)"], rows
        )
    )
    out.append("")
    out.append("![engine benchmark](engine.png)")
    out.append(END)
    return "\n".join(out)


def splice(readme: str, section: str) -> str:
    """``readme`` with its engine section replaced by ``section`` (appended if it has none)."""
    if BEGIN in readme and END in readme:
        head, _, rest = readme.partition(BEGIN)
        _, _, tail = rest.partition(END)
        return head + section + tail
    if not readme.strip():
        return section + "\n"
    return readme.rstrip("\n") + "\n\n" + section + "\n"


def draw(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stacks = sorted({r["stack"] for r in results["rows"]})
    colors = {
        "engine": "tab:green",
        "hf-engine": "tab:orange",
        "hf download": "tab:red",
        "raw GETs": "tab:grey",
    }
    fig, axes = plt.subplots(1, 5, figsize=(22, 3.8))
    ax = axes[0]
    labels, x = [], 0
    for s in stacks:
        for name in ("large", "many"):
            for i, method in enumerate(("engine", "hf-engine", "hf download")):
                r = _one(results, "cold", stack=s, repo_name=name, method=method)
                if r:
                    ax.bar(
                        x + i * 0.27,
                        r["wall_s"],
                        0.27,
                        color=colors[method],
                        label=method if x == 0 else None,
                    )
            labels.append((x + 0.27, f"{name}\n{s}"))
            x += 1
    ax.set_xticks([p for p, _ in labels], [t for _, t in labels], fontsize=7)
    ax.set_ylabel("cold wall time (s)")
    ax.set_title("cold, unthrottled")
    ax.legend(fontsize=7)
    ax = axes[1]
    bars = []
    for r in results["rows"]:
        if r["cell"] == "shared":
            bars.append((f"{r['repo_name']} {r['method']}\n{r['stack']}", r["x_floor"], colors[r["method"]]))
    for i, (_, v, c) in enumerate(bars):
        ax.bar(i, v, color=c)
    ax.axhline(1.05, color="grey", ls=":", lw=0.8)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=6)
    ax.set_ylabel("wall / floor")
    ax.set_title(f"shared link {results['settings']['shared_rate'] / MB:g} MB/s")
    ax = axes[2]
    bars = []
    for r in results["rows"]:
        if r["cell"] in ("kill", "cut"):
            bars.append((f"{r['cell']} {r['method']}\n{r['stack']}", r["ratio"], colors[r["method"]]))
    for i, (_, v, c) in enumerate(bars):
        ax.bar(i, v, color=c)
    ax.axhline(1.0, color="grey", ls=":", lw=0.8)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=6, rotation=30)
    ax.set_ylabel("bytes served / needed")
    ax.set_title("interrupted downloads")
    ax = axes[3]
    groups = [("cold", "large"), ("cold", "many"), ("rss", "one")]
    sizes = results["repos"]
    ticks = []
    for g, (cell, name) in enumerate(groups):
        for i, method in enumerate(("engine", "hf-engine", "hf download")):
            r = _one(results, cell, stack=stacks[0], repo_name=name, method=method) if stacks else None
            if r:
                ax.bar(
                    g + i * 0.27, r["rss_mb"], 0.27, color=colors[method], label=method if g == 0 else None
                )
        largest = sizes.get(name, {}).get("largest", 0) / MB
        ticks.append((g + 0.27, f"{name}\n~{largest:.0f} MB/file"))
    ax.set_xticks([p for p, _ in ticks], [t for _, t in ticks], fontsize=7)
    ax.set_ylabel("peak RSS (MB)")
    ax.set_title(f"peak RSS of the downloader ({stacks[0] if stacks else '-'})")
    ax = axes[4]
    for s in stacks:
        pts = sorted(
            (r["files"], r["median_us"]) for r in _rows(results, "warm-path", stack=s) if "median_us" in r
        )
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=s)
    ax.axhline(1000, color="grey", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("files")
    ax.set_ylabel("warm prefetch per call (us)")
    ax.set_title("warm path")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_engine_report(results: dict[str, Any], out: Path, *, plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    section = engine_section(results)
    written = []
    path = out / "engine.json"
    path.write_text(json.dumps(results, indent=1, sort_keys=True))
    written.append(path)
    readme = out / "README.md"
    readme.write_text(splice(readme.read_text() if readme.exists() else "", section))
    written.append(readme)
    if plots:
        draw(results, out / "engine.png")
        written.append(out / "engine.png")
    return written


def kept_section(out: Path) -> str | None:
    """The engine section from a previous ``engine.json`` in ``out``, for :mod:`benchmarks.report`."""
    path = out / "engine.json"
    try:
        return engine_section(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError):
        return None
