"""Real worker processes that start a call at the same instant: the way to test many loaders at once.

Each worker is ``python -m hub_prefetch.testing._worker_main`` with the environment the caller gives
(``HF_HOME``, ``HF_ENDPOINT``, ... set before the child imports anything). It imports the target module,
reports READY, and blocks until :meth:`WorkerPool.go` releases every worker together; then it calls
``module:function(**kwargs)`` and reports one JSON result. A worker that crashes, is killed, or outlives
its deadline still yields a :class:`WorkerResult` (``ok=False``, with its ``returncode``). Every wait is
bounded; stragglers are killed with their whole process group. The entries of
``HUB_PREFETCH_WORKER_PRELOAD`` and of ``preload=`` are loaded before the target
(:mod:`hub_prefetch.testing.harness`).

    results = run_workers("hub_prefetch.testing.targets:plain_from_pretrained",
                          {"repo_id": "tiny/sharded-bert", "subfolder": "text_encoder"},
                          n=8, env=hf_env)
    assert all(r.ok for r in results), [r.error for r in results]
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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .harness import QUIET_ENV, WorkerError, WorkerResult, worker_environ

__all__ = ["QUIET_ENV", "WorkerError", "WorkerPool", "WorkerResult", "run_workers"]

_STDERR_TAIL = 4000


class _Worker:
    def __init__(self, index: int, proc: subprocess.Popen[str], stderr_path: Path) -> None:
        self.index = index
        self.proc = proc
        self.stderr_path = stderr_path
        self.changed = threading.Condition()
        self.readies = 0  # READY lines seen: one per round
        self.messages: list[dict[str, Any]] = []  # result lines, one per round
        self.eof = False
        self.killed_by: str | None = None  # "Killed" or "Timeout"
        self.t_exit: float | None = None
        self.final_stderr: str | None = None  # kept when the pool removes its temp folder
        self.reader = threading.Thread(target=self._read, name=f"worker-{index}-stdout", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            for line in stdout:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                with self.changed:
                    if message.get("event") == "ready":
                        self.readies += 1
                    elif message.get("event") == "result":
                        self.messages.append(message)
                    self.changed.notify_all()
        finally:
            with self.changed:
                self.t_exit = time.time()
                self.eof = True
                self.changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], deadline: float) -> bool:
        """Wait until ``predicate()`` (checked under the lock) or EOF or the deadline; return predicate()."""
        with self.changed:
            while not predicate() and not self.eof:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.changed.wait(remaining)
            return predicate()

    def stderr_tail(self) -> str:
        if self.final_stderr is not None:
            return self.final_stderr
        try:
            data = self.stderr_path.read_bytes()
        except OSError:
            return ""
        return data[-_STDERR_TAIL:].decode("utf-8", "replace")

    def signal(self, sig: int) -> None:
        # The worker leads its own session: its children (if any) go down with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


class WorkerPool:
    """``n`` worker processes running ``target`` with the same or per-worker ``kwargs``, step by step.

    ``start()`` spawns them, ``wait_ready()`` waits until all have imported the target, ``go()``
    releases them at once, ``results()`` collects one :class:`WorkerResult` each. Use it as a context
    manager so that nothing outlives the test.
    """

    def __init__(
        self,
        target: str,
        kwargs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        n: int,
        env: Mapping[str, str | None],
        timeout: float = 120.0,
        preload: Sequence[str] = (),
        inherit_env: bool = True,
        python: str | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        if ":" not in target:
            raise ValueError(f"target must be 'module:function', not {target!r}")
        self.target = target
        self.n = n
        self.timeout = timeout
        self._round = 0
        self._kwargs = self._per_worker(kwargs)
        self._preload = list(preload)
        self._env = worker_environ(env, inherit=inherit_env)
        self._python = python or sys.executable
        self._cwd = cwd
        self._workers: list[_Worker] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.t_go: float | None = None

    # ----------------------------------------------------------------------------------- lifecycle
    def start(self) -> WorkerPool:
        """Start one interpreter per worker; each waits for :meth:`go`. Returns the pool."""
        if self._workers:
            raise RuntimeError("pool already started")
        self._tmp = tempfile.TemporaryDirectory(prefix="hub-prefetch-workers-")
        for index in range(self.n):
            stderr_path = Path(self._tmp.name) / f"worker-{index}.stderr"
            with stderr_path.open("wb") as stderr:
                proc = subprocess.Popen(
                    [self._python, "-m", "hub_prefetch.testing._worker_main"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    env=self._env,
                    cwd=self._cwd,
                    text=True,
                    encoding="utf-8",
                    start_new_session=True,
                )
            job = {
                "target": self.target,
                "kwargs": self._kwargs[index],
                "index": index,
                "preload": self._preload,
            }
            self._workers.append(_Worker(index, proc, stderr_path))
            self._send(proc.stdin, json.dumps(job))
        return self

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    @property
    def round(self) -> int:
        """Index of the current round: 0 for the first call, +1 per :meth:`next_round`."""
        return self._round

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every live worker is READY for this round; raise :class:`WorkerError` if one died
        first (its traceback or stderr in the message) or stayed silent until ``timeout``."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        wanted = self._round + 1
        for worker in self._workers:
            if worker.killed_by is not None:
                continue
            ready = worker.wait_for(lambda: worker.readies >= wanted, deadline)  # noqa: B023 - called here
            if ready or worker.killed_by is not None:
                continue
            detail = (
                worker.messages[-1].get("traceback") if worker.messages else None
            ) or worker.stderr_tail()
            state = "exited before READY" if worker.eof else "not READY in time"
            self.close()
            raise WorkerError(f"worker {worker.index} {state}:\n{detail}")

    def go(self) -> float:
        """Release every ready worker now; return the wall time of the release."""
        if not self._workers:
            raise RuntimeError("pool not started")
        self.t_go = time.time()
        # A pipe write per worker takes microseconds: the spread of the starts is the scheduler's.
        for worker in self._workers:
            if worker.killed_by is None:
                self._send(worker.proc.stdin, "GO")
        return self.t_go

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Kill worker ``index`` (and its process group); its result reports ``error_type='Killed'``."""
        worker = self._workers[index]
        if worker.proc.poll() is None:
            worker.killed_by = "Killed"
        worker.signal(sig)

    def round_results(self, timeout: float | None = None) -> list[WorkerResult]:
        """Wait (bounded) for this round's result of every worker, leaving the processes running for
        :meth:`next_round`; a worker still busy at the deadline is killed and reported as ``Timeout``."""
        self._await_round(timeout)
        return [self._collect(worker, self._round) for worker in self._workers]

    def _await_round(self, timeout: float | None) -> None:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        wanted = self._round + 1
        for worker in self._workers:
            done = worker.wait_for(lambda: len(worker.messages) >= wanted, deadline)  # noqa: B023
            if done or worker.killed_by is not None:
                continue
            if worker.eof:
                # Its stdout closed: it is exiting. Reap it before calling it a straggler.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.proc.wait(timeout=max(deadline - time.monotonic(), 5.0))
            if worker.proc.poll() is None:
                worker.killed_by = "Timeout"
                worker.signal(signal.SIGKILL)
        for worker in self._workers:
            if len(worker.messages) < wanted:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.proc.wait(timeout=10)
                worker.wait_for(lambda: False, time.monotonic() + 5)

    def next_round(self, kwargs: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None) -> None:
        """Let every live worker run the target once more, with new ``kwargs`` (default: the same).

        The processes (and their imports) are reused; call :meth:`wait_ready` and :meth:`go` next.
        """
        per_worker = self._kwargs if kwargs is None else self._per_worker(kwargs)
        self._kwargs = per_worker
        for worker in self._workers:
            if len(worker.messages) <= self._round:
                raise RuntimeError(f"worker {worker.index} has no result for round {self._round} yet")
        self._round += 1
        for worker in self._workers:
            if worker.killed_by is None and worker.proc.poll() is not None:
                worker.killed_by = "Crashed"  # died in an earlier round: reported, never waited for
            if worker.killed_by is None:
                self._send(worker.proc.stdin, json.dumps({"kwargs": per_worker[worker.index]}))

    def results(self, timeout: float | None = None) -> list[WorkerResult]:
        """This round's results (see :meth:`round_results`), after ending every worker (so that each
        result carries its ``returncode``)."""
        self._await_round(timeout)
        self.close()
        return [self._collect(worker, self._round) for worker in self._workers]

    def close(self) -> None:
        """End every worker (EOF, then SIGKILL for stragglers), release pipes and temp files; idempotent."""
        for worker in self._workers:
            if worker.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    worker.proc.stdin.close()
        deadline = time.monotonic() + 5
        for worker in self._workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
            if worker.proc.poll() is None:
                worker.signal(signal.SIGKILL)
        for worker in self._workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=10)
            worker.reader.join(timeout=5)
            if worker.proc.stdout is not None:
                with contextlib.suppress(OSError):
                    worker.proc.stdout.close()
        if self._tmp is not None:
            for worker in self._workers:
                worker.final_stderr = worker.stderr_tail()
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> WorkerPool:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------- helpers
    def _per_worker(self, kwargs: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        if isinstance(kwargs, Mapping):
            return [dict(kwargs) for _ in range(self.n)]
        per_worker = [dict(k) for k in kwargs]
        if len(per_worker) != self.n:
            raise ValueError(f"{len(per_worker)} kwargs mappings for {self.n} workers")
        return per_worker

    @staticmethod
    def _send(stream: IO[str] | None, line: str) -> None:
        if stream is None:
            return
        # A worker that already died has a closed pipe: its result will say why.
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            stream.write(line + "\n")
            stream.flush()

    def _collect(self, worker: _Worker, round_index: int) -> WorkerResult:
        stderr = worker.stderr_tail()
        returncode = worker.proc.poll()
        if len(worker.messages) > round_index:  # reported before any kill: the call really finished
            message = worker.messages[round_index]
            return WorkerResult(
                index=worker.index,
                ok=bool(message["ok"]),
                value=message.get("value"),
                error_type=message.get("error_type"),
                error=message.get("error"),
                t_start=float(message["t_start"]),
                t_end=float(message["t_end"]),
                returncode=returncode,
                pid=worker.proc.pid,
                traceback=message.get("traceback"),
                stderr=stderr,
            )
        t_end = worker.t_exit or time.time()
        t_start = self.t_go if self.t_go is not None else t_end
        if worker.killed_by == "Timeout":
            error = f"still running after {self.timeout:g} s: killed"
        elif worker.killed_by == "Killed":
            error = f"killed (returncode {returncode})"
        else:
            error = f"exited with returncode {returncode} without a result"
        return WorkerResult(
            index=worker.index,
            ok=False,
            value=None,
            error_type=worker.killed_by or "Crashed",
            error=error,
            t_start=t_start,
            t_end=t_end,
            returncode=returncode,
            pid=worker.proc.pid,
            stderr=stderr,
        )


def run_workers(
    target: str,
    kwargs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    n: int,
    env: Mapping[str, str | None],
    timeout: float = 120.0,
    preload: Sequence[str] = (),
) -> list[WorkerResult]:
    """Start ``n`` workers, wait until all are ready, release them together, return their results.

    ``timeout`` bounds the start-up and, separately, the run after GO.
    """
    with WorkerPool(target, kwargs, n=n, env=env, timeout=timeout, preload=preload) as pool:
        pool.wait_ready()
        pool.go()
        return pool.results()
