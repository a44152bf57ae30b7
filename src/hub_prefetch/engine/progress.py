"""Progress of a download, for people: the CLI's status line observes it; library callers get
huggingface_hub's own progress bar (which ``HF_HUB_DISABLE_PROGRESS_BARS`` turns off)."""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

from huggingface_hub.utils.tqdm import tqdm as hf_tqdm

__all__ = ["Observer", "Progress", "observe"]


class Observer(Protocol):
    def __call__(self, done: int, total: int, rate: float) -> None: ...


_OBSERVER: contextvars.ContextVar[Observer | None] = contextvars.ContextVar(
    "hub_prefetch_progress", default=None
)


@contextlib.contextmanager
def observe(observer: Observer) -> Iterator[None]:
    """Send the byte progress of every download started in this context to ``observer``."""
    token = _OBSERVER.set(observer)
    try:
        yield
    finally:
        _OBSERVER.reset(token)


class Progress:
    """Bytes arrived out of the bytes needed; thread-safe, reported at most ten times a second."""

    def __init__(self, total: int, *, label: str) -> None:
        self.total, self.done = total, 0
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._last = 0.0
        self._observer = _OBSERVER.get()
        self._bar: Any = None
        if self._observer is None and total:
            self._bar = hf_tqdm(total=total, unit="B", unit_scale=True, desc=label, leave=False)  # type: ignore[no-untyped-call]

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(n)
            now = time.monotonic()
            if self._observer is None or now - self._last < 0.1:
                return
            self._last = now
            done, rate = self.done, self.done / max(now - self._started, 1e-3)
        self._observer(done, self.total, rate)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._observer is not None:
            self._observer(self.done, self.total, self.done / max(time.monotonic() - self._started, 1e-3))
