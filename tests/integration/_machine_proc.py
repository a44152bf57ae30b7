"""One process of a simulated machine (run by path, often inside ``unshare``): hold the repo lock while
"publishing", or run a whole prefetch, and log every step as a JSON line with wall-clock times.

All simulated machines share this kernel, so their ``time.time()`` values are comparable: a test
reads the logs of every process and checks that no two ever published while both held the lock.

    python _machine_proc.py '{"mode": "hold", "who": "A", "events": "...", "cache": "...", ...}'
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

cfg: dict[str, Any] = json.loads(sys.argv[1])
_events = open(cfg["events"], "a", buffering=1)  # noqa: SIM115 - open for the life of the process


def log(event: str, **facts: Any) -> None:
    record = {"who": cfg["who"], "pid": os.getpid(), "t": time.time(), "event": event, **facts}
    _events.write(json.dumps(record) + "\n")


class _ToEvents(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        log("log", level=record.levelname, logger=record.name, message=record.getMessage())


def hold() -> None:
    """Acquire, then "publish" every 20 ms while the fence says the lock is ours, until told to stop."""
    from hub_prefetch.errors import LockTimeout
    from hub_prefetch.lock import RepoLock

    lock = RepoLock(
        cfg["cache"],
        cfg.get("repo", "org/model"),
        revision=cfg.get("revision", "main"),
        backend="lease",
        lease_ttl=cfg["ttl"],
        host_id=cfg.get("host_id"),
        timeout=cfg.get("timeout"),
    )
    log("waiting", boot_id=lock.identity.boot_id, host=lock.identity.host)
    try:
        lock.acquire()
    except LockTimeout as exc:
        log("timeout", waited_s=exc.waited_s)
        return
    log("acquired", epoch=lock.epoch)
    stop = Path(cfg["stop_file"]) if cfg.get("stop_file") else None
    end = time.monotonic() + float(cfg.get("hold_s", 3600))
    try:
        while time.monotonic() < end and not (stop is not None and stop.exists()):
            before = time.time()
            held = lock.still_held()
            checked = time.time()  # the fence's answer holds for [before, checked]; the log line may lag
            if not held:
                log("lost", epoch=lock.epoch)
                break
            log("publish", before=before, checked=checked, epoch=lock.epoch)
            time.sleep(0.02)
    finally:
        lock.release()
        log("released", epoch=lock.epoch)


def prefetch() -> None:
    """A whole prefetch under the lease (then a deep verify), reporting the result."""
    import hub_prefetch

    handler = _ToEvents(logging.INFO)
    for name in ("hub_prefetch.lock", "hub_prefetch.prefetch"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    settings = hub_prefetch.Settings.from_env(
        cache_dir=cfg["cache"], lock_backend="lease", lease_ttl=cfg["ttl"], host_id=cfg.get("host_id")
    )
    log("start")
    try:
        result = hub_prefetch.prefetch(
            cfg["repo"], cfg.get("subfolders"), revision=cfg.get("revision"), settings=settings
        )
    except Exception as exc:
        log("failed", error_type=type(exc).__name__, error=str(exc))
        raise
    report = hub_prefetch.verify(
        cfg["repo"], cfg.get("subfolders"), revision=result.commit, settings=settings
    )
    log(
        "done",
        commit=result.commit,
        downloaded=list(result.downloaded),
        bytes_downloaded=result.bytes_downloaded,
        verified=report.ok,
    )


if __name__ == "__main__":
    {"hold": hold, "prefetch": prefetch}[cfg["mode"]]()
