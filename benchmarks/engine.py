"""The download engine's benchmark (issue 16): ``python -m benchmarks.engine --quick`` (``make bench``) or
``--full`` (``make bench-full``).

One local Hub in its own process serves repos of random bytes built here: a few large shards (quick 4 x
128 MB, full 4 x 512 MB), 256 small shards, one large file (quick 256 MB, full 1 GB) and three tiny repos
of 6, 64 and 256 files for the warm path. Every download is a real CLI process over a fresh cache, timed
from spawn to exit (imports included, for every method alike), with its peak RSS from ``wait4`` and its
requests and bytes from the server's log. Methods, side by side in the same run:

* ``engine``: ``hub-prefetch warm --all`` (our engine, the default);
* ``hf-engine``: the same with ``HUB_PREFETCH_ENGINE=huggingface_hub`` (one ``hf_hub_download`` per file);
* ``hf download``: huggingface_hub's own CLI, the same files (the upstream baseline of every ratio).

Cells: cold unthrottled, a throttled shared link (vs the floor bytes / bandwidth), a per-connection
limit (one large file), metadata and HEAD requests per cold cache, a downloader SIGKILLed half-way and a
connection cut at 200 kB (bytes served / needed), peak RSS against file size, and the warm path per call
(``hub_prefetch.prefetch`` in one process, median). Results: ``benchmarks/results/engine.json``, a section
of ``benchmarks/results/README.md`` and ``engine.png`` (:mod:`benchmarks.engine_report`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .run import QUIET_ENV, RESULTS, _default_python, _settled_log

WORKTREE = Path(__file__).resolve().parents[1]
METHODS = ("engine", "hf-engine", "hf download")
MB = 1_000_000


@dataclass
class Config:
    mode: str
    shard_bytes: int
    shards: int
    many: int
    many_bytes: int
    one_bytes: int
    shared_rate: float
    per_connection_rate: float
    kill_rate: float
    reps: int
    pythons: dict[str, str]
    # Which stacks run which cell: every cell on both stacks where it is cheap.
    stacks_for: dict[str, list[str]]
    cells: list[str]
    timeout_s: float
    warm_budget_s: float
    out: Path = RESULTS
    plots: bool = True


CELLS = ("cold", "shared", "per-connection", "kill", "cut", "rss", "warm-path")


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(prog="python -m benchmarks.engine", description=__doc__.split("\n")[0])
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_const", dest="mode", const="quick", help="default")
    group.add_argument("--full", action="store_const", dest="mode", const="full", help="GB sizes")
    group.add_argument("--tiny", action="store_const", dest="mode", const="tiny", help="a smoke run")
    p.add_argument(
        "--stacks",
        default="new,old",
        help="comma-separated names or name=python (default: .venv/<name>, or BENCH_PYTHON_NEW / _OLD)",
    )
    p.add_argument("--cells", default=",".join(CELLS))
    p.add_argument("--reps", type=int, help="repetitions of each cold run, fastest kept (quick 2, full 3)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--no-plots", action="store_true")
    a = p.parse_args(argv)
    mode = a.mode or "quick"
    pythons = {s: os.environ.get(f"BENCH_PYTHON_{s.upper()}") or _default_python(s) for s in ("new", "old")}
    stacks = []
    for spec in a.stacks.split(","):
        name, _, python = spec.strip().partition("=")
        if name:
            stacks.append(name)
            if python:
                pythons[name] = python
    stacks = [s for s in stacks if Path(pythons.get(s, "")).exists()]
    first = stacks[:1]
    sizes = {
        "tiny": (4 * MB, 16, 64_000, 8 * MB, 1),
        "quick": (128 * MB, 256, 256_000, 256 * MB, 2),
        "full": (512 * MB, 256, 1 * MB, 1024 * MB, 3),
    }[mode]
    everywhere = {c: stacks for c in CELLS}
    # Quick: the throttled, kill and cut cells (seconds of waiting each) on the first stack only.
    cheap = {**everywhere, **{c: first for c in ("shared", "per-connection", "kill", "cut", "rss")}}
    return Config(
        mode=mode,
        shard_bytes=sizes[0],
        shards=4,
        many=sizes[1],
        many_bytes=sizes[2],
        one_bytes=sizes[3],
        shared_rate=50 * MB,
        per_connection_rate=20 * MB,
        kill_rate=100 * MB,
        reps=max(1, a.reps or sizes[4]),
        pythons=pythons,
        stacks_for=everywhere if mode == "full" else cheap,
        cells=[c for c in a.cells.split(",") if c in CELLS],
        timeout_s=900.0 if mode == "full" else 300.0,
        warm_budget_s=1.0 if mode != "tiny" else 0.2,
        out=a.out,
        plots=not a.no_plots,
    )


def _log(msg: str) -> None:
    print(f"[engine-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------ repos


@dataclass
class Repo:
    repo_id: str
    files: dict[str, int]

    @property
    def bytes(self) -> int:
        return sum(self.files.values())


def _index(shards: list[str]) -> str:
    weight_map = {f"layer.{i}.weight": name for i, name in enumerate(shards)}
    return json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}, indent=1)


def build_repo(store: Any, repo_id: str, n: int, size: int, *, seed: int) -> Repo:
    """``config.json``, a safetensors index and ``n`` shards of ``size`` random bytes (one commit per
    shard, so at most one shard is in memory)."""
    rng = random.Random(seed)
    names = [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    if n == 1:
        names = ["model.safetensors"]
    meta: dict[str, str | bytes] = {"config.json": json.dumps({"model_type": "bench", "n": n})}
    if n > 1:
        meta["model.safetensors.index.json"] = _index(names)
    store.commit(repo_id, meta, message="config")
    files = {k: len(v.encode() if isinstance(v, str) else v) for k, v in meta.items()}
    batch: dict[str, str | bytes] = {}
    for name in names:
        # randbytes takes at most 2**31 bits at once
        batch[name] = b"".join(rng.randbytes(min(64 * MB, size - i)) for i in range(0, size, 64 * MB))
        files[name] = size
        if sum(len(v) for v in batch.values()) >= 64 * MB or name == names[-1]:
            store.commit(repo_id, batch, message=f"add {len(batch)} shards")
            batch = {}
    return Repo(repo_id, files)


# ------------------------------------------------------------------------------------------------ runs


@dataclass
class Ctx:
    cfg: Config
    hub: Any
    repos: dict[str, Repo]
    work: Path
    results: dict[str, Any] = field(default_factory=dict)


def _env(ctx: Ctx, home: Path, method: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV}
    env.update({k: v for k, v in QUIET_ENV.items() if v is not None})
    env.update(
        {
            "HF_ENDPOINT": ctx.hub.url,
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(home / "hub"),
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONPATH": f"{WORKTREE / 'src'}{os.pathsep}{WORKTREE}",
            "HUB_PREFETCH_ENGINE": "huggingface_hub" if method == "hf-engine" else "hub_prefetch",
        }
    )
    return env


def _cmd(ctx: Ctx, stack: str, method: str, repo: Repo, home: Path) -> list[str]:
    python = ctx.cfg.pythons[stack]
    if method == "hf download":
        hf = str(Path(python).with_name("hf"))
        if _hf_cli_works(hf):
            return [hf, "download", repo.repo_id, "--cache-dir", str(home / "hub")]
        # What `hf download REPO` calls, where the stack's CLI cannot start (1.3.7 here lacks click).
        code = (
            "import sys; from huggingface_hub import snapshot_download as s; "
            "s(sys.argv[1], cache_dir=sys.argv[2])"
        )
        return [python, "-c", code, repo.repo_id, str(home / "hub")]
    if method == "raw GETs":
        urls = [f"{ctx.hub.url}/{repo.repo_id}/resolve/main/{p}" for p in repo.files]
        return [python, "-c", RAW_GETS, *urls]
    return [python, "-m", "hub_prefetch.cli", "warm", repo.repo_id, "--all", "-q", "--json"]


#: What the link and the local Hub deliver to a client that does nothing with the bytes: 8 threads of
#: urllib GETs, bodies read in 1 MiB chunks and dropped, no cache, no hashing (the shared-link cell's
#: calibration: a client cannot beat it on this machine).
RAW_GETS = """
import sys, threading, urllib.request
urls = sys.argv[1:]
def worker():
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while urls:
        try:
            url = urls.pop()
        except IndexError:
            return
        with opener.open(url) as resp:
            while resp.read(1 << 20):
                pass
threads = [threading.Thread(target=worker) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


@functools.cache
def _hf_cli_works(hf: str) -> bool:
    try:
        return subprocess.run([hf, "version"], capture_output=True, timeout=60, check=False).returncode == 0
    except OSError:
        return False


def _spawn(ctx: Ctx, stack: str, method: str, repo: Repo, home: Path) -> subprocess.Popen[bytes]:
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "stderr.txt", "wb") as err:
        return subprocess.Popen(
            _cmd(ctx, stack, method, repo, home),
            env=_env(ctx, home, method),
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )


def _hwm_kb(pid: int) -> int:
    """The peak resident set of ``pid`` so far (``VmHWM``; 0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _cpu_pressure() -> float | None:
    """The share of the last 10 s in which some task waited for a CPU (Linux PSI), in percent."""
    try:
        with open("/proc/pressure/cpu") as fh:
            return float(fh.readline().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def _reap(proc: subprocess.Popen[bytes], deadline: float) -> tuple[int, float, float]:
    """Wait for ``proc`` (killed at ``deadline``): its exit status, peak RSS in MB and CPU seconds.

    The peak is ``VmHWM`` polled every 20 ms: ``wait4``'s ``ru_maxrss`` survives ``exec``, so a child
    would report at least this benchmark process's own size."""
    peak, polls = 0, 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, peak / 1024, usage.ru_utime + usage.ru_stime
        if polls % 10 == 0:
            peak = max(peak, _hwm_kb(proc.pid))
        polls += 1
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.002)


def _metrics(records: list[Any]) -> dict[str, Any]:
    counts = dict.fromkeys(("revision", "tree", "head", "get", "other"), 0)
    for r in records:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    gets = [r for r in records if r.kind == "get"]
    window = max(r.t_end or r.t_start for r in gets) - min(r.t_start for r in gets) if gets else None
    events = sorted([(r.t_start, 1) for r in gets] + [(r.t_end or r.t_start, -1) for r in gets])
    inflight = peak = 0
    for _, step in events:
        inflight += step
        peak = max(peak, inflight)
    first_get = min((r.t_start for r in gets), default=None)
    first_req = min((r.t_start for r in records), default=None)
    return {
        "counts": counts,
        "max_inflight_gets": peak,
        # The client's own time before the first body: the listing, HEADs, planning.
        "first_request_to_first_get_s": first_get - first_req if first_get and first_req else None,
        "metadata_requests": counts["revision"] + counts["tree"] + counts["head"] + counts["other"],
        "bytes_served": sum(r.bytes_sent for r in gets),
        "get_window_s": window,
        "range_gets": sum(1 for r in gets if r.range_start is not None),
    }


def download(ctx: Ctx, stack: str, method: str, repo: Repo, *, keep: bool = False) -> dict[str, Any]:
    """One cold download of ``repo`` into a fresh cache, timed, measured, and its cache deleted."""
    home = Path(tempfile.mkdtemp(prefix="run-", dir=ctx.work))
    ctx.hub.reset_log()
    load, cpu_pressure = os.getloadavg()[0], _cpu_pressure()
    t0 = time.monotonic()
    proc = _spawn(ctx, stack, method, repo, home)
    rc, rss, cpu = _reap(proc, t0 + ctx.cfg.timeout_s)
    wall = time.monotonic() - t0
    m = {"stack": stack, "method": method, "repo": repo.repo_id, "rc": rc, "wall_s": wall, "rss_mb": rss}
    m["cpu_s"] = cpu
    m["load"] = load
    m["cpu_pressure"] = cpu_pressure
    m.update(_metrics(_settled_log(ctx.hub)))
    if rc != 0:
        m["stderr"] = (home / "stderr.txt").read_text(errors="replace")[-1500:]
    m["needed"] = repo.bytes
    if not keep:
        shutil.rmtree(home, ignore_errors=True)
    else:
        m["home"] = str(home)
    return m


def _say(label: str, m: dict[str, Any]) -> None:
    _log(
        f"{label} {m['stack']}/{m['method']}: {m['wall_s']:.2f} s, rc {m['rc']}, "
        f"{m['bytes_served'] / MB:.1f} MB served, {m['counts']}, rss {m['rss_mb']:.0f} MB, "
        f"cpu {m['cpu_s']:.2f} s" + (f"\n{m['stderr']}" if m.get("stderr") else "")
    )


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [m for m in runs if m["rc"] == 0] or runs
    best = dict(min(ok, key=lambda m: m["wall_s"]))
    best["walls_s"] = [m["wall_s"] for m in runs]
    best["rss_mb"] = max(m["rss_mb"] for m in runs)
    return best


# ------------------------------------------------------------------------------------------------ cells


def cell_cold(ctx: Ctx, stack: str) -> list[dict[str, Any]]:
    """Cold cache, one process, unthrottled: the three methods, repetitions interleaved."""
    rows = []
    for name in ("large", "many"):
        repo = ctx.repos[name]
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
        for _ in range(ctx.cfg.reps):
            for method in METHODS:
                m = download(ctx, stack, method, repo)
                _say(f"cold {name}", m)
                runs[method].append(m)
        rows += [{**_best(runs[m]), "cell": "cold", "repo_name": name} for m in METHODS]
    return rows


def cell_shared(ctx: Ctx, stack: str) -> list[dict[str, Any]]:
    rate = ctx.cfg.shared_rate
    ctx.hub.set_bandwidth(rate, shared=True)
    rows = []
    try:
        for name in ("large", "many"):
            repo = ctx.repos[name]
            methods = (
                (*METHODS, "raw GETs") if ctx.cfg.mode == "full" else ("engine", "hf download", "raw GETs")
            )
            for method in methods:
                m = download(ctx, stack, method, repo)
                _say(f"shared {rate / MB:g} MB/s {name}", m)
                m.update(cell="shared", repo_name=name, rate=rate, floor_s=repo.bytes / rate)
                rows.append(m)
    finally:
        ctx.hub.set_bandwidth(None)
    return rows


def cell_per_connection(ctx: Ctx, stack: str) -> list[dict[str, Any]]:
    rate = ctx.cfg.per_connection_rate
    ctx.hub.set_bandwidth(rate, shared=False)
    rows = []
    try:
        repo = ctx.repos["one"]
        for method in ("engine", "hf download"):
            m = download(ctx, stack, method, repo)
            _say(f"per-connection {rate / MB:g} MB/s", m)
            m.update(cell="per-connection", repo_name="one", rate=rate)
            rows.append(m)
    finally:
        ctx.hub.set_bandwidth(None)
    return rows


def cell_kill(ctx: Ctx, stack: str) -> list[dict[str, Any]]:
    """SIGKILL the downloader once half the large file was served (link throttled so the moment is
    exact), then run the same command to completion; bytes served over both / bytes needed."""
    repo = ctx.repos["one"]
    big = max(repo.files, key=lambda p: repo.files[p])
    rows = []
    for method in METHODS:
        home = Path(tempfile.mkdtemp(prefix="kill-", dir=ctx.work))
        ctx.hub.set_bandwidth(ctx.cfg.kill_rate, shared=True)
        ctx.hub.reset_log()
        proc = _spawn(ctx, stack, method, repo, home)
        deadline = time.monotonic() + ctx.cfg.timeout_s
        at = 0
        while proc.poll() is None and time.monotonic() < deadline:
            at = sum(r.bytes_sent for r in ctx.hub.requests() if r.filename == big)
            if at >= repo.files[big] // 2:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait()
        first = _metrics(_settled_log(ctx.hub))
        ctx.hub.set_bandwidth(None)
        ctx.hub.reset_log()
        t0 = time.monotonic()
        again = _spawn(ctx, stack, method, repo, home)
        rc, _, _ = _reap(again, t0 + ctx.cfg.timeout_s)
        second = _metrics(_settled_log(ctx.hub))
        served = first["bytes_served"] + second["bytes_served"]
        m = {
            "cell": "kill",
            "stack": stack,
            "method": method,
            "rc": rc,
            "killed_at": first["bytes_served"],
            "killed_at_big": at,
            "bytes_served": served,
            "needed": repo.bytes,
            "ratio": served / repo.bytes,
            "second_wall_s": time.monotonic() - t0,
            "counts": second["counts"],
        }
        if rc != 0:
            m["stderr"] = (home / "stderr.txt").read_text(errors="replace")[-1500:]
        _log(
            f"kill {stack}/{method}: killed at {at / MB:.1f} MB, served {served / MB:.1f} MB, "
            f"x{m['ratio']:.3f}"
        )
        rows.append(m)
        shutil.rmtree(home, ignore_errors=True)
    return rows


def cell_cut(ctx: Ctx, stack: str) -> list[dict[str, Any]]:
    repo = ctx.repos["one"]
    big = max(repo.files, key=lambda p: repo.files[p])
    rows = []
    for method in METHODS:
        fault = ctx.hub.drop_after(f"*/resolve/*/{big}", 200_000, count=1)
        m = download(ctx, stack, method, repo)
        ctx.hub.clear_fault(fault)
        m.update(cell="cut", ratio=m["bytes_served"] / repo.bytes)
        _say("cut at 200 kB", m)
        rows.append(m)
    return rows


def cell_rss(ctx: Ctx, stack: str) -> list[dict[str, Any]]:
    """Peak RSS against file size: the one-file repo unthrottled (the cold cell gives the shards')."""
    rows = []
    for method in METHODS:
        m = download(ctx, stack, method, ctx.repos["one"])
        _say("rss", m)
        m.update(cell="rss", repo_name="one")
        rows.append(m)
    return rows


def cell_warm_path(ctx: Ctx, stack: str) -> list[dict[str, Any]]:
    """``hub_prefetch.prefetch`` on a warm cache, in one process, median per call."""
    rows = []
    home = Path(tempfile.mkdtemp(prefix="warm-", dir=ctx.work))
    names = [n for n in ctx.repos if n.startswith("warm-")]
    for name in names:
        m = download(ctx, stack, "engine", ctx.repos[name], keep=True)
        shutil.move(m["home"], home / name)
    ctx.hub.reset_log()
    child = {
        "repos": {n: [ctx.repos[n].repo_id, str(home / n / "hub")] for n in names},
        "budget_s": ctx.cfg.warm_budget_s,
    }
    proc = subprocess.run(
        [ctx.cfg.pythons[stack], "-m", "benchmarks.engine", "--warm-path-child", json.dumps(child)],
        env=_env(ctx, home, "engine"),
        cwd=WORKTREE,
        capture_output=True,
        text=True,
        timeout=ctx.cfg.timeout_s,
        check=False,
    )
    requests = len(ctx.hub.requests())
    shutil.rmtree(home, ignore_errors=True)
    if proc.returncode != 0:
        _log(f"warm path {stack}: failed\n{proc.stderr[-2000:]}")
        return [{"cell": "warm-path", "stack": stack, "error": proc.stderr[-1500:]}]
    for name, v in json.loads(proc.stdout.strip().splitlines()[-1]).items():
        row = {"cell": "warm-path", "stack": stack, "files": len(ctx.repos[name].files), **v}
        row["hub_requests"] = requests
        _log(f"warm path {stack} {row['files']} files: median {v['median_us']:.0f} us over {v['n']} calls")
        rows.append(row)
    return rows


def warm_path_child(spec: dict[str, Any]) -> None:
    import hub_prefetch

    out = {}
    for name, (repo_id, cache_dir) in spec["repos"].items():
        hub_prefetch.prefetch(repo_id, all_files=True, cache_dir=cache_dir)  # untimed first call
        times: list[float] = []
        t_stop = time.perf_counter() + spec["budget_s"]
        while len(times) < 20 or (time.perf_counter() < t_stop and len(times) < 20000):
            t = time.perf_counter()
            hub_prefetch.prefetch(repo_id, all_files=True, cache_dir=cache_dir)
            times.append(time.perf_counter() - t)
        times.sort()
        out[name] = {
            "n": len(times),
            "median_us": times[len(times) // 2] * 1e6,
            "p90_us": times[int(len(times) * 0.9)] * 1e6,
            "min_us": times[0] * 1e6,
        }
    print(json.dumps(out))


CELL_FUNCS = {
    "cold": cell_cold,
    "shared": cell_shared,
    "per-connection": cell_per_connection,
    "kill": cell_kill,
    "cut": cell_cut,
    "rss": cell_rss,
    "warm-path": cell_warm_path,
}


def _versions(python: str) -> dict[str, str]:
    code = "import huggingface_hub, sys; print(huggingface_hub.__version__, sys.version.split()[0])"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False).stdout.split()
    return {
        "python": python,
        "huggingface_hub": out[0] if out else "?",
        "python_version": out[-1] if out else "?",
        "baseline": "hf download"
        if _hf_cli_works(str(Path(python).with_name("hf")))
        else "snapshot_download (its hf CLI cannot start)",
    }


def run(cfg: Config) -> dict[str, Any]:
    from hub_prefetch.testing import LocalHub
    from hub_prefetch.testing.store import RepoStore

    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="hub-prefetch-engine-bench-"))
    results: dict[str, Any] = {
        "mode": cfg.mode,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"cpus": os.cpu_count()},
        "loadavg_start": os.getloadavg(),
        "settings": {
            "shared_rate": cfg.shared_rate,
            "per_connection_rate": cfg.per_connection_rate,
            "kill_rate": cfg.kill_rate,
            "reps": cfg.reps,
        },
        "stacks": {s: _versions(p) for s, p in cfg.pythons.items() if Path(p).exists()},
        "rows": [],
    }
    hub = None
    try:
        store = RepoStore(work / "store")
        _log(f"building repos in {work}")
        repos = {
            "large": build_repo(store, "bench/large", cfg.shards, cfg.shard_bytes, seed=1),
            "many": build_repo(store, "bench/many", cfg.many, cfg.many_bytes, seed=2),
            "one": build_repo(store, "bench/one", 1, cfg.one_bytes, seed=3),
        }
        for n in (6, 64, 256):
            repos[f"warm-{n}"] = build_repo(store, f"bench/warm-{n}", n - 2, 1000, seed=n)
        results["repos"] = {
            k: {
                "repo_id": r.repo_id,
                "files": len(r.files),
                "bytes": r.bytes,
                "largest": max(r.files.values()),
            }
            for k, r in repos.items()
        }
        _log(
            f"repos built in {time.monotonic() - t0:.0f} s: "
            + ", ".join(f"{k} {r.bytes / MB:.0f} MB" for k, r in repos.items())
        )
        hub = LocalHub.spawn(store.root)
        ctx = Ctx(cfg, hub, repos, work, results)
        for cell in cfg.cells:
            for stack in cfg.stacks_for.get(cell, []):
                results["rows"] += CELL_FUNCS[cell](ctx, stack)
    finally:
        if hub is not None:
            hub.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["duration_s"] = time.monotonic() - t0
    results["loadavg_end"] = os.getloadavg()
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--warm-path-child"]:
        warm_path_child(json.loads(argv[1]))
        return 0
    cfg = parse_args(argv)
    _log(f"mode {cfg.mode}: cells {cfg.cells}, stacks {cfg.stacks_for}")
    results = run(cfg)
    from .engine_report import write_engine_report

    paths = write_engine_report(results, cfg.out, plots=cfg.plots)
    _log(f"done in {results['duration_s']:.0f} s; wrote {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
