"""The worker host: one interpreter per stack that imports torch, transformers, huggingface_hub and
hub_prefetch once, then forks the real worker processes of every benchmark cell.

Importing torch + transformers costs seconds of CPU per process; 64 of them on 2 cores would take
minutes per cell, and that cost comes before GO in every approach anyway. Forking a host that already paid
it gives each cell fresh, independent worker processes (own memory, own file descriptors, own locks) in
milliseconds. The host itself never loads a model or starts a thread pool, so every fork is clean.

Protocol (JSON lines; stdin commands, stdout answers)::

    host -> {"event": "ready", "versions": {...}}
    cmd  -> {"op": "cell", "approach": "plain", "n": 8, "cache_dir": ..., ...}
    host -> {"event": "cell", "t_go": ..., "workers": [{"ok": ..., "t_start": ..., "t_end": ...}, ...]}
    cmd  -> {"op": "micro", "what": "prefetch", ...}      (one measurement in a forked child)
    host -> {"event": "micro", "ok": true, "value": {...}}
    cmd  -> {"op": "quit"}

Run as ``<stack python> -m benchmarks.host`` with the repo root on ``PYTHONPATH``.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

from . import approaches


def _emit(channel: TextIO, message: dict[str, Any]) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _set_env(env: dict[str, str | None]) -> None:
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _maxrss_kb() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# ------------------------------------------------------------------------------------------------ cells


def _worker(index: int, cmd: dict[str, Any], ready_w: int, go_r: int, out: Path) -> None:
    """Body of one forked worker; never returns."""
    code = 0
    try:
        if cmd.get("noop_locks"):
            approaches.disable_flock()
        _set_env(cmd.get("env", {}))
        os.write(ready_w, b"R")
        os.close(ready_w)
        os.read(go_r, 1)  # EOF when the host closes its end: every worker starts at once
        t_start = time.time()
        result: dict[str, Any] = {"index": index, "pid": os.getpid(), "t_start": t_start}
        try:
            model = approaches.load(cmd["approach"], cmd["repo_id"], cmd["subfolder"], cmd["cache_dir"])
        except BaseException as exc:
            result.update(
                ok=False,
                t_end=time.time(),
                error_type=type(exc).__name__,
                error=str(exc)[:500],
                traceback=traceback.format_exc()[-2000:],
            )
        else:
            result.update(ok=True, t_end=time.time(), error_type=None, error=None)
            expected = cmd.get("fingerprint")
            if expected:
                # Checked after the clock stopped: a wrong load must fail the cell, not slow it.
                from hub_prefetch.testing.repos import tensor_fingerprint

                if tensor_fingerprint(model) != expected:
                    result.update(ok=False, error_type="WrongWeights", error="fingerprint mismatch")
        result["t_fetched"] = approaches.marks.get("fetched")
        result["maxrss_kb"] = _maxrss_kb()
        _write_json(out / f"w{index}.json", result)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stderr.flush()
        os._exit(code)


def _reap(pids: list[int], deadline: float) -> dict[int, int]:
    """Wait for ``pids`` until ``deadline``; SIGKILL the rest. Returns pid -> wait status."""
    status: dict[int, int] = {}
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status[pid] = st
                pending.discard(pid)
        if pending:
            time.sleep(0.01)
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _, st = os.waitpid(pid, 0)
        status[pid] = -1 if st == 0 else st
    return status


def run_cell(cmd: dict[str, Any]) -> dict[str, Any]:
    n = int(cmd["n"])
    timeout = float(cmd.get("timeout", 300))
    with tempfile.TemporaryDirectory(prefix="hpbench-cell-") as tmp:
        out = Path(tmp)
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        pids: list[int] = []
        for index in range(n):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                os.close(ready_r)
                os.close(go_w)
                _worker(index, cmd, ready_w, go_r, out)
            pids.append(pid)
        os.close(ready_w)
        os.close(go_r)
        got = 0
        deadline = time.monotonic() + 60
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([ready_r], [], [], left)[0]:
                break
            chunk = os.read(ready_r, n - got)
            if not chunk:
                break
            got += len(chunk)
        os.close(ready_r)
        t_go = time.time()
        os.close(go_w)
        status = _reap(pids, time.monotonic() + timeout)
        workers = []
        for index, pid in enumerate(pids):
            path = out / f"w{index}.json"
            if path.is_file():
                workers.append(json.loads(path.read_text()))
            else:
                killed = status.get(pid) == -1
                workers.append(
                    {
                        "index": index,
                        "pid": pid,
                        "ok": False,
                        "error_type": "Timeout" if killed else "Crashed",
                        "error": f"wait status {status.get(pid)}",
                        "t_start": t_go,
                        "t_end": time.time(),
                        "maxrss_kb": None,
                    }
                )
    return {"event": "cell", "t_go": t_go, "ready": got, "workers": workers}


# ------------------------------------------------------------------------------------------------ micro


def _timed(fn: Any, *, min_iter: int, max_iter: int, budget_s: float) -> dict[str, Any]:
    """Per-call durations in microseconds: at least ``min_iter`` calls, at most ``max_iter`` or the budget."""
    fn()  # the first call pays lazy imports and per-process caches; a worker pays it once
    times: list[float] = []
    stop = time.perf_counter() + budget_s
    while len(times) < max_iter and (len(times) < min_iter or time.perf_counter() < stop):
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1000)
    times.sort()
    return {
        "n": len(times),
        "median_us": times[len(times) // 2],
        "p90_us": times[min(len(times) - 1, int(len(times) * 0.9))],
        "min_us": times[0],
    }


def _micro_body(cmd: dict[str, Any]) -> dict[str, Any]:
    what = cmd["what"]
    repo_id, sub, cache_dir = cmd["repo_id"], cmd["subfolder"], cmd["cache_dir"]
    budget = float(cmd.get("budget_s", 2.0))
    if what == "warmup":
        approaches.load("hub-prefetch", repo_id, sub, cache_dir)
        approaches.load("reference", repo_id, sub, cache_dir)
        return {}
    if what == "prefetch":
        import hub_prefetch

        return _timed(
            lambda: hub_prefetch.prefetch(repo_id, [sub], cache_dir=cache_dir),
            min_iter=50,
            max_iter=20000,
            budget_s=budget,
        )
    if what in approaches.LOADERS:
        return _timed(
            lambda: approaches.load(what, repo_id, sub, cache_dir), min_iter=5, max_iter=200, budget_s=budget
        )
    if what == "pinned_load":
        auto = approaches._auto_model()
        return _timed(
            lambda: auto.from_pretrained(
                repo_id, subfolder=sub, cache_dir=cache_dir, revision=cmd["commit"], local_files_only=True
            ),
            min_iter=5,
            max_iter=200,
            budget_s=budget,
        )
    if what == "snapshot_download":
        from huggingface_hub import snapshot_download

        patterns = [f"{sub}/*", f"{sub}/**", "*.json", "*.txt"]
        return _timed(
            lambda: snapshot_download(repo_id, allow_patterns=patterns, cache_dir=cache_dir),
            min_iter=5,
            max_iter=200,
            budget_s=budget,
        )
    if what.startswith("lock_cost:"):
        return _lock_cost(what.partition(":")[2], repo_id, cache_dir, budget)
    raise ValueError(f"unknown micro benchmark {what!r}")


def _lock_cost(backend: str, repo_id: str, cache_dir: str, budget: float) -> dict[str, Any]:
    """Uncontended acquire + release: of the repo lock per backend (measured by the lock helper's
    ``benchmarks/lock_cost.py``), or of the reference's bare ``flock`` on one file."""
    folder = Path(cache_dir) / "lock-cost"
    folder.mkdir(parents=True, exist_ok=True)
    if backend in ("flock", "lease"):
        from benchmarks import lock_cost

        n = 200 if budget < 1 else 1000
        median, best = lock_cost.measure(folder, backend, n, rounds=5)
        return {
            "n": 5 * n,
            "median_us": median,
            "min_us": best,
            "p90_us": None,
            "source": "lock_cost.measure",
        }
    if backend != "reference-flock":
        raise ValueError(f"unknown lock backend {backend!r}")
    import fcntl

    path = folder / "reference.lock"

    def bare() -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    return _timed(bare, min_iter=50, max_iter=20000, budget_s=budget / 2)


def run_micro(cmd: dict[str, Any]) -> dict[str, Any]:
    """One measurement in a forked child, so the host stays free of model state and thread pools."""
    with tempfile.TemporaryDirectory(prefix="hpbench-micro-") as tmp:
        out = Path(tmp) / "micro.json"
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 0
            try:
                if cmd.get("noop_locks"):
                    approaches.disable_flock()
                _set_env(cmd.get("env", {}))
                try:
                    value = _micro_body(cmd)
                    _write_json(out, {"ok": True, "value": value})
                except BaseException as exc:
                    _write_json(out, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
                    traceback.print_exc()
            except BaseException:
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        _reap([pid], time.monotonic() + float(cmd.get("timeout", 300)))
        if out.is_file():
            answer = json.loads(out.read_text())
        else:
            answer = {"ok": False, "error": "micro benchmark child died"}
    return {"event": "micro", **answer}


def main() -> int:
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    versions = approaches.preload()
    _emit(channel, {"event": "ready", "pid": os.getpid(), "versions": versions, "cpus": os.cpu_count()})
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        op = cmd.get("op")
        try:
            if op == "quit":
                break
            if op == "cell":
                _emit(channel, run_cell(cmd))
            elif op == "micro":
                _emit(channel, run_micro(cmd))
            else:
                _emit(channel, {"event": "error", "error": f"unknown op {op!r}"})
        except Exception as exc:
            traceback.print_exc()
            _emit(channel, {"event": "error", "error": f"{type(exc).__name__}: {exc}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
