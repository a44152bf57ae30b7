"""A slow-filesystem fault for worker processes: writes to ``refs/`` files pause after truncation.

huggingface_hub < 1.31 rewrites ``refs/<branch>`` in place: ``open(path, "w")`` truncates it, then
``write`` fills it. A reader between the two sees an empty ref. On a busy node or a network filesystem
that gap is long; on a quiet 2-core test machine it is microseconds and the race almost never shows.
This knob widens the gap the way a slow filesystem does, without touching huggingface_hub's code: the
truncation happens, then the write waits. A worker whose ``HUB_PREFETCH_WORKER_PRELOAD`` names
``tests.support.slowfs:install_from_env`` installs it before its target when
``HUB_PREFETCH_TEST_SLOW_REF_WRITES`` (seconds) is set; the tests' ``hf_env`` preloads it for every worker.
"""

from __future__ import annotations

import builtins
import os
import time
from typing import Any

__all__ = ["ENV", "install_from_env", "install_slow_ref_writes"]

ENV = "HUB_PREFETCH_TEST_SLOW_REF_WRITES"
_REFS = f"{os.sep}refs{os.sep}"


class _SlowWriter:
    def __init__(self, handle: Any, delay: float) -> None:
        self._handle, self._delay = handle, delay

    def write(self, data: Any) -> Any:
        time.sleep(self._delay)
        return self._handle.write(data)

    def __enter__(self) -> _SlowWriter:
        self._handle.__enter__()
        return self

    def __exit__(self, *exc: object) -> Any:
        return self._handle.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def install_slow_ref_writes(delay: float) -> None:
    """Make every ``open(<...>/refs/<...>, "w")`` of this process wait ``delay`` s before writing."""
    real_open = builtins.open

    def slow_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode and isinstance(file, (str, os.PathLike)) and _REFS in os.fspath(file):
            return _SlowWriter(handle, delay)
        return handle

    builtins.open = slow_open


def install_from_env() -> None:
    """Install the slow writes if ``HUB_PREFETCH_TEST_SLOW_REF_WRITES`` names a delay; else do nothing."""
    delay = os.environ.get(ENV)
    if delay:
        install_slow_ref_writes(float(delay))
