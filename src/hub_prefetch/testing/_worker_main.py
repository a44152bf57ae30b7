"""Entry point of one worker process started by :mod:`hub_prefetch.testing.workers`.

Protocol (one JSON object per line)::

    parent -> stdin   {"target": "module:function", "kwargs": {...}, "index": 3, "preload": [...]}
    child  -> stdout  {"event": "ready", "pid": 1234}           target imported, waiting
    parent -> stdin   GO
    child  -> stdout  {"event": "result", "ok": true, "value": ..., "t_start": ..., "t_end": ...}
    parent -> stdin   {"kwargs": {...}}        optional: one more round in the same process
    child  -> stdout  {"event": "ready", ...}  ... GO, result, and so on; EOF on stdin ends the worker

The environment (``HF_HOME``, ``HF_ENDPOINT``, ...) is the process environment given by the parent, so it
is in place before anything imports huggingface_hub. The entries of ``HUB_PREFETCH_WORKER_PRELOAD``, then
of ``preload``, then the target module are loaded before READY
(:func:`~hub_prefetch.testing.harness.load_target`), so that GO starts every worker's call, not its
imports, at the same instant. Whatever the target or the libraries print goes to stderr: file descriptor 1
carries the protocol only.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any, TextIO

from .harness import load_target


def _emit(channel: TextIO, message: dict[str, Any]) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def _failure(exc: BaseException, t_start: float) -> dict[str, Any]:
    return {
        "event": "result",
        "ok": False,
        "value": None,
        "error_type": type(exc).__name__,
        "error_module": type(exc).__module__,
        "error": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "t_start": t_start,
        "t_end": time.time(),
    }


def main() -> int:
    # Keep the protocol channel for ourselves; stray prints of libraries land on stderr.
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    job = json.loads(sys.stdin.readline())
    t_import = time.time()
    try:
        func = load_target(job["target"], job.get("preload", ()))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        traceback.print_exc()
        _emit(channel, _failure(exc, t_import))
        return 1
    kwargs = job.get("kwargs", {})
    status = 0
    while True:
        _emit(channel, {"event": "ready", "pid": os.getpid(), "t_ready": time.time()})
        if sys.stdin.readline().strip() != "GO":
            return status  # the parent closed stdin: no more rounds
        status = _run(channel, job["target"], func, kwargs)
        # The same process may run another round: a JSON line with new kwargs, then GO; EOF ends it.
        line = sys.stdin.readline()
        if not line.strip():
            return status
        kwargs = json.loads(line).get("kwargs", {})


def _run(channel: TextIO, target: str, func: Any, kwargs: dict[str, Any]) -> int:
    t_start = time.time()
    try:
        value = func(**kwargs)
    except BaseException as exc:  # noqa: BLE001 - the error is the result
        traceback.print_exc()
        _emit(channel, _failure(exc, t_start))
        return 1
    t_end = time.time()
    result = {
        "event": "result",
        "ok": True,
        "value": value,
        "error_type": None,
        "error": None,
        "t_start": t_start,
        "t_end": t_end,
    }
    try:
        line = json.dumps(result)
    except (TypeError, ValueError) as exc:
        _emit(channel, _failure(TypeError(f"result of {target} is not JSON-serialisable: {exc}"), t_start))
        return 1
    channel.write(line + "\n")
    channel.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
