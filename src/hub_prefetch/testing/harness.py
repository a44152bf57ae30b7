"""What both worker pools share: the environment a worker starts with, how it loads its target, and what
it reports.

:class:`~hub_prefetch.testing.workers.WorkerPool` spawns one interpreter per worker
(``python -m hub_prefetch.testing._worker_main``); :class:`~hub_prefetch.testing.forkpool.ForkedWorkers`
forks its workers from one interpreter. Either way, before the target module is imported:

1. the entries of ``HUB_PREFETCH_WORKER_PRELOAD`` (:data:`PRELOAD_ENV`, comma-separated) in the
   worker's environment, in order;
2. then the entries of the pool's ``preload=``;
3. then the target's module, so that GO starts every worker's call, not its imports.

An entry is a module to import (``"diffusers"``) or ``"module:function"``: import the module, then call
the function with no arguments, e.g. to install a fault that patches the process. The environment variable
reaches workers started by code you do not control (a helper that builds its own pool, the demo); this
project's tests use it to slow writes to ``refs/`` the way a slow filesystem does.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PRELOAD_ENV",
    "QUIET_ENV",
    "WorkerError",
    "WorkerResult",
    "load_target",
    "preload_entries",
    "worker_environ",
]

#: Comma-separated modules every worker imports before its target (see the module docstring).
PRELOAD_ENV = "HUB_PREFETCH_WORKER_PRELOAD"

#: Libraries quiet and single-threaded: many workers share two cores, and stderr stays readable.
QUIET_ENV: dict[str, str] = {
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_XET": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONWARNINGS": "ignore",
}


class WorkerError(RuntimeError):
    """The pool could not get its workers to the starting line (a worker died or stayed silent)."""


@dataclass
class WorkerResult:
    """Outcome of one worker. Times are ``time.time()`` wall clock (comparable across processes).

    ``error_type`` is the exception class name, or ``"Killed"`` (killed by the pool's ``kill``),
    ``"Timeout"`` (killed at the deadline), ``"Crashed"`` (exited without reporting).
    """

    index: int
    ok: bool
    value: Any
    error_type: str | None
    error: str | None
    t_start: float
    t_end: float
    returncode: int | None
    pid: int | None = None
    traceback: str | None = None
    stderr: str = field(default="", repr=False)

    @property
    def duration(self) -> float:
        return self.t_end - self.t_start


def worker_environ(env: Mapping[str, str | None], *, inherit: bool = True) -> dict[str, str]:
    """The environment of a worker: ``os.environ`` (if ``inherit``) updated by ``env``, where a ``None``
    value removes the variable; output unbuffered unless ``env`` says otherwise."""
    merged = dict(os.environ) if inherit else {}
    for key, value in env.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    merged.setdefault("PYTHONUNBUFFERED", "1")
    return merged


def preload_entries(preload: Sequence[str] = ()) -> list[str]:
    """What a worker loads before its target: the entries of :data:`PRELOAD_ENV`, then ``preload``."""
    from_env = [entry.strip() for entry in os.environ.get(PRELOAD_ENV, "").split(",")]
    return [entry for entry in (*from_env, *preload) if entry]


def load_target(target: str, preload: Sequence[str] = ()) -> Callable[..., Any]:
    """Load :func:`preload_entries` (import each module; call each ``module:function``), then return the
    ``module:function`` named by ``target``."""
    for entry in preload_entries(preload):
        module_name, _, func_name = entry.partition(":")
        module = importlib.import_module(module_name)
        if func_name:
            getattr(module, func_name)()
    module_name, _, func_name = target.partition(":")
    func: Callable[..., Any] = getattr(importlib.import_module(module_name), func_name)
    return func
