"""The console display shared by the CLI and the demo: one status line per process, human units, and the
logging set-up.

The library never configures logging; the CLI does, here. While a command runs, one line on stderr
says what it is doing (waiting for the lock, and for whom; bytes arrived so far and the rate), redrawn
in place. It is drawn only on a terminal (or with ``--progress always``); elsewhere the lock's own
"waiting for ..." log lines, one per ``HUB_PREFETCH_WAIT_LOG_INTERVAL``, tell the story in CI logs.
huggingface_hub's own per-file bars are turned off: N parallel downloads would draw N bars.

This module sits beside :mod:`hub_prefetch.cli` rather than inside it so that :mod:`hub_prefetch.demo`
can draw the same line without importing the CLI (which imports the demo).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

__all__ = ["StatusLine", "configure_logging", "human_bytes", "human_seconds"]

_FRAMES = "|/-\\"


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover - unreachable


def human_seconds(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{int(s // 60)} min {int(s % 60)} s"


class StatusLine:
    """A single redrawn status line on ``stream``; a no-op when not ``enabled``."""

    def __init__(self, stream: TextIO, *, enabled: bool, label: str, interval: float = 0.2) -> None:
        self.stream = stream
        self.enabled = enabled
        self.label = label
        self.interval = interval
        self.lock = threading.RLock()
        self._waiting: str | None = None
        self._watch: Path | None = None
        self._baseline: dict[str, int] = {}
        self._started = time.monotonic()
        self._first_byte: float | None = None
        self._drawn = False
        self._transfer: tuple[int, int, float] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._frame = 0

    # -- what to show -------------------------------------------------------------------------------
    def watch_blobs(self, folder: Path) -> None:
        """Count bytes that arrive in ``folder`` (huggingface_hub's ``blobs/``) from now on."""
        self._watch = folder
        self._baseline = self._scan()

    def waiting(self, message: str | None) -> None:
        self._waiting = message

    def transfer(self, done: int, total: int, rate: float) -> None:
        """The engine's own count (:func:`hub_prefetch.engine.observe`): bytes, rate and time left."""
        self._transfer = (done, total, rate)

    def _scan(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        if self._watch is None:
            return sizes
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._watch):
                with contextlib.suppress(OSError):
                    sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
        return sizes

    def text(self) -> str:
        elapsed = time.monotonic() - self._started
        if self._waiting:
            return f"{self.label}: {self._waiting}"
        if self._transfer is not None:
            done, total, rate = self._transfer
            eta = f", {human_seconds((total - done) / rate)} left" if rate > 0 and total > done else ""
            return (
                f"{self.label}: {human_bytes(done)} of {human_bytes(total)} ({human_bytes(rate)}/s){eta}, "
                f"{elapsed:.0f} s"
            )
        now = self._scan()
        arrived = sum(size for name, size in now.items() if self._baseline.get(name) != size)
        if arrived:
            if self._first_byte is None:
                self._first_byte = time.monotonic()
            rate = arrived / max(time.monotonic() - self._first_byte, self.interval)
            return f"{self.label}: {human_bytes(arrived)} arrived ({human_bytes(rate)}/s), {elapsed:.0f} s"
        return f"{self.label}: {elapsed:.0f} s"

    # -- drawing ------------------------------------------------------------------------------------
    def clear(self) -> None:
        with self.lock:
            if self._drawn:
                self.stream.write("\r\x1b[2K")
                self.stream.flush()
                self._drawn = False

    def draw(self) -> None:
        if not self.enabled:
            return
        with self.lock:
            self._frame = (self._frame + 1) % len(_FRAMES)
            width = 100
            with contextlib.suppress(OSError, ValueError):
                width = os.get_terminal_size(self.stream.fileno()).columns - 1
            line = f"{_FRAMES[self._frame]} {self.text()}"[: max(width, 20)]
            self.stream.write("\r\x1b[2K" + line)
            self.stream.flush()
            self._drawn = True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.draw()

    def __enter__(self) -> StatusLine:
        self._started = time.monotonic()
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="hub-prefetch-status", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self.clear()


def _from_lock(record: logging.LogRecord) -> bool:
    """Whether ``record`` comes from the repo lock (``hub_prefetch.lock`` or a logger below it)."""
    return record.name == "hub_prefetch.lock" or record.name.startswith("hub_prefetch.lock.")


class _StatusAwareHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Prints log records above the status line, and feeds lock-wait records to it."""

    def __init__(self, stream: TextIO, status: StatusLine | None, level: int, lock_info: bool) -> None:
        super().__init__(stream)
        self.status = status
        self.show_level = level
        self.lock_info = lock_info

    def emit(self, record: logging.LogRecord) -> None:
        status = self.status
        from_lock = _from_lock(record)
        if from_lock and status is not None:
            text = record.getMessage()
            if text.startswith("waiting for"):
                status.waiting(text)
            elif text.startswith("acquired"):
                status.waiting(None)
        shown = record.levelno >= self.show_level or (
            self.lock_info and from_lock and record.levelno >= logging.INFO
        )
        if not shown:
            return
        if status is not None:
            with status.lock:
                status.clear()
                super().emit(record)
        else:
            super().emit(record)


def configure_logging(verbosity: int, *, status: StatusLine | None, stream: TextIO | None = None) -> None:
    """Route hub_prefetch's loggers to stderr: warnings by default, ``-v`` info, ``-vv`` debug.

    Without a status line, the lock's periodic "waiting for ..." lines are shown too (unless
    ``verbosity`` is negative, i.e. ``--quiet``), so a job log shows why a prologue is slow.
    """
    stream = stream or sys.stderr
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    lock_info = verbosity >= 0 and (status is None or not status.enabled)
    handler = _StatusAwareHandler(stream, status, level, lock_info)
    handler.setFormatter(logging.Formatter("hub-prefetch: %(levelname)s: %(message)s"))
    root = logging.getLogger("hub_prefetch")
    for old in list(root.handlers):
        if isinstance(old, _StatusAwareHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    # DEBUG at the logger so the first "waiting for" record (logged at DEBUG) reaches the status line;
    # the handler decides what is printed.
    root.setLevel(logging.DEBUG)
    root.propagate = False
    if verbosity >= 2:
        hf = logging.getLogger("huggingface_hub")
        hf.addHandler(handler)
        hf.setLevel(logging.DEBUG)
