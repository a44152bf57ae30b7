"""Worker processes forked from one interpreter that imported the heavy libraries once.

:class:`~hub_prefetch.testing.workers.WorkerPool` starts a fresh interpreter per worker: the most
faithful shape, but on a small machine each one pays seconds of ``torch`` + ``transformers`` imports.
:class:`ForkedWorkers` starts one fresh interpreter (a *zygote*) with the run's environment, lets it
load the ``HUB_PREFETCH_WORKER_PRELOAD`` and ``preload`` entries and the target (as a spawned worker
does: :mod:`hub_prefetch.testing.harness`), and has it ``fork`` the ``n`` workers. Each worker is a
real process with its own pid, file descriptors and locks; they start their call at the same instant
and report the same :class:`~hub_prefetch.testing.harness.WorkerResult`. ``hub-prefetch demo`` uses it
to stay within a couple of minutes on two cores.

Protocol (one JSON object per line on the zygote's stdin/stdout)::

    parent -> zygote  {"target": "module:function", "kwargs": [{...}, ...], "preload": [...], "timeout": s}
    zygote -> parent  {"event": "ready", "pids": [...]}          every worker forked and waiting
    parent -> zygote  GO                                         the zygote releases all workers at once
    zygote -> parent  {"event": "done", "results": [...]}        after every worker exited or was killed
    parent -> zygote  {"kwargs": [{...}, ...]}                   another round: fresh workers, same imports
    ...
    parent -> zygote  (end of input)                             the zygote exits

The zygote must not start threads before it forks (none of the libraries it imports does).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .harness import WorkerError, WorkerResult, load_target, worker_environ

__all__ = ["ForkedWorkers"]

_MAX_TEXT = 4000


class ForkedWorkers:
    """``n`` forked workers running ``target`` with the same or per-worker ``kwargs``; a context manager."""

    def __init__(
        self,
        target: str,
        kwargs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        n: int,
        env: Mapping[str, str | None],
        timeout: float = 120.0,
        preload: Sequence[str] = (),
        python: str | None = None,
    ) -> None:
        if ":" not in target:
            raise ValueError(f"target must be 'module:function', not {target!r}")
        per_worker = (
            [dict(kwargs) for _ in range(n)] if isinstance(kwargs, Mapping) else [dict(k) for k in kwargs]
        )
        if len(per_worker) != n:
            raise ValueError(f"{len(per_worker)} kwargs mappings for {n} workers")
        self.target, self.n, self.timeout = target, n, timeout
        self._job = {"target": target, "kwargs": per_worker, "preload": list(preload), "timeout": timeout}
        self._env = worker_environ(env)
        self._python = python or sys.executable
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[bytes] | None = None
        self._lines: list[dict[str, Any]] = []
        self._got_line = threading.Condition()
        self._killed: set[int] = set()
        self._cursor = 0
        self.pids: list[int] = []
        self.t_go: float | None = None

    def start(self, timeout: float | None = None) -> ForkedWorkers:
        """Start the zygote and wait until every worker is forked and waiting for :meth:`go`."""
        self.start_async()
        self.wait_started(timeout)
        return self

    def start_async(self) -> None:
        """Start the zygote (it imports and forks in the background); then :meth:`wait_started`."""
        self._stderr = tempfile.TemporaryFile(prefix="hub-prefetch-forkpool-")  # noqa: SIM115 - closed in close()
        self._proc = subprocess.Popen(
            [self._python, "-m", "hub_prefetch.testing.forkpool"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=self._env,
            text=True,
            encoding="utf-8",
            start_new_session=True,
        )
        threading.Thread(target=self._read, name="forkpool-stdout", daemon=True).start()
        self._send(json.dumps(self._job))

    def wait_started(self, timeout: float | None = None) -> None:
        """Block until the workers of :meth:`start_async` are forked and waiting for :meth:`go`."""
        ready = self._wait_event("ready", self.timeout if timeout is None else timeout)
        if ready is None:
            tail = self.stderr_tail()
            self.close()
            raise WorkerError(f"forked workers not ready in time; zygote stderr tail:\n{tail}")
        self.pids = [int(p) for p in ready["pids"]]

    def next_round(
        self, kwargs: Mapping[str, Any] | Sequence[Mapping[str, Any]], timeout: float | None = None
    ) -> None:
        """Fork a fresh set of ``n`` workers (after :meth:`results`) from the same zygote."""
        per_worker = (
            [dict(kwargs) for _ in range(self.n)]
            if isinstance(kwargs, Mapping)
            else [dict(k) for k in kwargs]
        )
        if len(per_worker) != self.n:
            raise ValueError(f"{len(per_worker)} kwargs mappings for {self.n} workers")
        self._killed = set()
        self.t_go = None
        self._send(json.dumps({"kwargs": per_worker}))
        ready = self._wait_event("ready", self.timeout if timeout is None else timeout)
        if ready is None:
            tail = self.stderr_tail()
            self.close()
            raise WorkerError(f"forked workers not ready in time; zygote stderr tail:\n{tail}")
        self.pids = [int(p) for p in ready["pids"]]

    def go(self) -> float:
        """Release every worker now; return the wall time of the release."""
        self.t_go = time.time()
        self._send("GO")
        return self.t_go

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Kill worker ``index``; its result reports ``error_type='Killed'``."""
        self._killed.add(index)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pids[index], sig)

    def results(self, timeout: float | None = None) -> list[WorkerResult]:
        """Wait (bounded: the zygote kills stragglers at its own deadline) for one result per worker."""
        wait = (self.timeout if timeout is None else timeout) + 30
        done = self._wait_event("done", wait)
        if done is None:
            tail = self.stderr_tail()
            self.close()
            raise WorkerError(f"forked workers gave no results in {wait:g} s:\n{tail}")
        out = []
        for raw in done["results"]:
            result = WorkerResult(**raw)
            if result.index in self._killed and result.error_type == "Crashed":
                result.error_type, result.error = "Killed", f"killed (returncode {result.returncode})"
            out.append(result)
        return out

    def stderr_tail(self) -> str:
        if self._stderr is None or self._stderr.closed:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()[-_MAX_TEXT:].decode("utf-8", "replace")

    def close(self) -> None:
        """Let the zygote exit, kill whatever still runs (zygote and workers); idempotent."""
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the workers share the zygote's session
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        if proc is not None:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        if self._stderr is not None:
            self._stderr.close()

    def __enter__(self) -> ForkedWorkers:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, line: str) -> None:
        stdin = self._proc.stdin if self._proc is not None else None
        if stdin is None:
            return
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            stdin.write(line + "\n")
            stdin.flush()

    def _read(self) -> None:
        stdout = self._proc.stdout if self._proc is not None else None
        if stdout is None:
            return
        with contextlib.suppress(OSError, ValueError):
            for line in stdout:
                with contextlib.suppress(ValueError), self._got_line:
                    self._lines.append(json.loads(line))
                    self._got_line.notify_all()
        with self._got_line:
            self._lines.append({"event": "eof"})
            self._got_line.notify_all()

    def _wait_event(self, event: str, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        with self._got_line:
            while True:
                while self._cursor < len(self._lines):
                    message = self._lines[self._cursor]
                    if message.get("event") == "eof":
                        return None
                    self._cursor += 1
                    if message.get("event") == event:
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._got_line.wait(remaining)


# ------------------------------------------------------------------------------------------ the zygote


def _child(index: int, func: Any, kwargs: dict[str, Any], go_fd: int, out: Path) -> None:
    """Runs in the forked worker; never returns."""
    code = 0
    try:
        os.read(go_fd, 1)
        t_start = time.time()
        try:
            value = func(**kwargs)
            message: dict[str, Any] = {"ok": True, "value": value, "error_type": None, "error": None}
            json.dumps(message)
        except BaseException as exc:  # noqa: BLE001 - the error is the result
            code = 1
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            sys.stderr.write(f"worker {index}: {tb}")
            message = {
                "ok": False,
                "value": None,
                "error_type": type(exc).__name__,
                "error": str(exc)[:_MAX_TEXT],
                "traceback": tb[-_MAX_TEXT:],
            }
        message.update(index=index, t_start=t_start, t_end=time.time(), pid=os.getpid())
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(message))
        os.replace(tmp, out)
    finally:
        sys.stderr.flush()
        os._exit(code)


def _zygote() -> int:
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(message: dict[str, Any]) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    job = json.loads(sys.stdin.readline())
    func = load_target(job["target"], job.get("preload", ()))
    kwargs_list: list[dict[str, Any]] = job["kwargs"]
    timeout = float(job.get("timeout", 120))
    while True:
        results = _round(func, kwargs_list, timeout, emit)
        if results is None:
            return 2
        emit({"event": "done", "results": results})
        line = sys.stdin.readline()
        if not line.strip():
            return 0
        kwargs_list = json.loads(line)["kwargs"]


def _round(
    func: Any, kwargs_list: list[dict[str, Any]], timeout: float, emit: Any
) -> list[dict[str, Any]] | None:
    """Fork one worker per kwargs, release them on GO, reap them; None if the parent went away."""
    go_r, go_w = os.pipe()
    outdir = Path(tempfile.mkdtemp(prefix="hub-prefetch-forkpool-"))
    pids = []
    for index, kwargs in enumerate(kwargs_list):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            os.close(go_w)
            _child(index, func, kwargs, go_r, outdir / f"{index}.json")
        pids.append(pid)
    os.close(go_r)
    emit({"event": "ready", "pids": pids})
    if sys.stdin.readline().strip() != "GO":
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return None
    t_go = time.time()
    os.write(go_w, b"g" * len(pids))  # one byte per worker, all in one write: one release
    os.close(go_w)
    deadline = time.monotonic() + timeout
    status: dict[int, int] = {}
    t_exit: dict[int, float] = {}
    timed_out: set[int] = set()
    while len(status) < len(pids):
        pid, code = os.waitpid(-1, os.WNOHANG)
        if pid:
            status[pid] = code
            t_exit[pid] = time.time()
            continue
        if time.monotonic() > deadline:
            for other in pids:
                if other not in status:
                    timed_out.add(other)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(other, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.005)
    results = []
    for index, pid in enumerate(pids):
        returncode = os.waitstatus_to_exitcode(status[pid])
        path = outdir / f"{index}.json"
        try:
            message = json.loads(path.read_text())
        except (OSError, ValueError):
            kind = "Timeout" if pid in timed_out else "Crashed"
            message = {
                "index": index,
                "ok": False,
                "value": None,
                "error_type": kind,
                "error": f"exited with returncode {returncode} without a result",
                "t_start": t_go,
                "t_end": t_exit[pid],
                "pid": pid,
            }
        message["returncode"] = returncode
        results.append(message)
        with contextlib.suppress(OSError):
            path.unlink()
    with contextlib.suppress(OSError):
        outdir.rmdir()
    return results


if __name__ == "__main__":
    sys.exit(_zygote())
