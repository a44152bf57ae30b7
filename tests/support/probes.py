"""Stdlib-only worker targets that exercise the worker harness itself (no torch import, fast start)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def now() -> float:
    return time.time()


def echo(**kwargs: Any) -> dict[str, Any]:
    return kwargs


def getenv(names: list[str]) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in names}


def mark_a() -> None:
    """A preload hook: appends ``a`` to ``HP_PRELOADED``, so a target can tell what ran before it."""
    _mark("a")


def mark_b() -> None:
    _mark("b")


def _mark(tag: str) -> None:
    os.environ["HP_PRELOADED"] = ",".join(filter(None, [os.environ.get("HP_PRELOADED"), tag]))


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def timed_write(path: str, text: str) -> float:
    """Seconds to open ``path`` for writing and write ``text`` (what a slow-filesystem knob stretches)."""
    t0 = time.perf_counter()
    with open(path, "w") as handle:
        handle.write(text)
    return time.perf_counter() - t0


def fail(message: str = "boom") -> None:
    raise ValueError(message)


def chatty(text: str = "noise") -> str:
    """Writes to stdout the way libraries do; the protocol must survive it."""
    print(text)
    sys.stdout.write('{"event": "result", "ok": true, "value": "forged"}\n')
    sys.stdout.flush()
    os.write(1, b"raw fd 1 write\n")
    return text


def exit_hard(code: int = 3) -> None:
    os._exit(code)


def unserialisable() -> object:
    return object()
