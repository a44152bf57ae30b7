"""Worker targets that run a load inside an injected fault: a broken ``flock``, a umask, per-call
environment, a lock holder that never lets go, a plain download that a test can stall.

Every fault is undone when the call returns, so a :class:`~hub_prefetch.testing.workers.WorkerPool`
can run a different fault in each round of the same processes (the soak does).
"""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import fcntl
import importlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download

from hub_prefetch import prefetch
from hub_prefetch.lock import RepoLock, clear_probe_cache

__all__ = [
    "FLOCK_MODES",
    "disk_full_after",
    "dispatch",
    "faulty_flock",
    "hold_repo_lock",
    "load_under_faults",
    "plain_download",
    "prefetch_under_faults",
]

#: ``flock`` behaviours a worker can be given: as it is, raising (with that errno), or a silent no-op.
FLOCK_MODES = ("ok", "ENOLCK", "ENOSYS", "EOPNOTSUPP", "noop")

# huggingface_hub freezes these at import; its download code reads the module attributes at call time.
_HF_CONSTANTS: dict[str, Callable[[str], Any]] = {
    "HF_HUB_DOWNLOAD_TIMEOUT": int,
    "HF_HUB_ETAG_TIMEOUT": int,
    "HF_HUB_DISABLE_SYMLINKS": lambda v: v.strip().lower() in ("1", "true", "yes", "on"),
    "HF_HUB_OFFLINE": lambda v: v.strip().lower() in ("1", "true", "yes", "on"),
}


@contextlib.contextmanager
def faulty_flock(mode: str = "ok") -> Iterator[None]:
    """Make ``fcntl.flock`` raise ``mode`` (an errno name) or do nothing (``"noop"``) for the block.

    It acts on every ``flock`` of the process: ours, filelock's (huggingface_hub's blob locks) and the
    probe's, as a filesystem without working ``flock`` would.
    """
    if mode not in FLOCK_MODES:
        raise ValueError(f"flock mode must be one of {FLOCK_MODES}, not {mode!r}")
    if mode == "ok":
        yield
        return
    real = fcntl.flock

    def fake(fd: Any, operation: int) -> None:
        if mode == "noop":
            return
        code = getattr(errno, mode)
        raise OSError(code, os.strerror(code))

    fcntl.flock = fake
    clear_probe_cache()
    try:
        yield
    finally:
        fcntl.flock = real
        clear_probe_cache()


@contextlib.contextmanager
def call_env(env: Mapping[str, str | None] | None) -> Iterator[None]:
    """Set (or, for None, unset) environment variables for the block, and huggingface_hub's frozen
    copies of the few it reads at import."""
    if not env:
        yield
        return
    constants: Any = importlib.import_module("huggingface_hub.constants")
    saved_env = {k: os.environ.get(k) for k in env}
    saved_const = {k: getattr(constants, k) for k in env if k in _HF_CONSTANTS and hasattr(constants, k)}
    try:
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
            if key in saved_const:
                default = {"HF_HUB_DOWNLOAD_TIMEOUT": 10, "HF_HUB_ETAG_TIMEOUT": 10}.get(key, False)
                setattr(constants, key, _HF_CONSTANTS[key](value) if value is not None else default)
        yield
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for key, value in saved_const.items():
            setattr(constants, key, value)


@contextlib.contextmanager
def _umask(mask: int | None) -> Iterator[None]:
    if mask is None:
        yield
        return
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@contextlib.contextmanager
def _dump_if_stuck(seconds: float | None) -> Iterator[None]:
    """Print every thread's stack to stderr if the block outlives ``seconds`` (a hang explains itself)."""
    if seconds is None:
        yield
        return
    faulthandler.dump_traceback_later(seconds, repeat=False)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def _used_bytes(root: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                total += st.st_size if not os.path.islink(os.path.join(dirpath, name)) else 0
    return total


class _FullDisk:
    """A download's temp file on a filesystem (``root``) that holds at most ``capacity`` bytes."""

    def __init__(self, inner: Any, root: str, capacity: int) -> None:
        self._inner, self._root, self._capacity = inner, root, capacity

    def write(self, data: bytes) -> int:
        self._inner.flush()
        room = self._capacity - _used_bytes(self._root)
        if len(data) > room:
            self._inner.write(data[: max(room, 0)])
            self._inner.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return int(self._inner.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextlib.contextmanager
def disk_full_after(capacity: int | None, root: str | None = None) -> Iterator[None]:
    """Downloads get ENOSPC once the files below ``root`` would pass ``capacity`` bytes: a full disk
    shared by every process, injected where a size-limited filesystem cannot be mounted. Both engines:
    huggingface_hub's temp file, and the positional writes of hub-prefetch's engine."""
    if capacity is None:
        yield
        return
    file_download: Any = importlib.import_module("huggingface_hub.file_download")
    real = file_download.http_get
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: Any, offset: int) -> int:
        where = os.readlink(f"/proc/self/fd/{fd}")
        if root is not None and where.startswith(root):
            grows = max(0, offset + len(data) - os.fstat(fd).st_size)
            if grows > capacity - _used_bytes(root):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    def http_get(url: str, temp_file: Any, *args: Any, **kwargs: Any) -> Any:
        where = root or os.path.dirname(os.path.dirname(str(temp_file.name)))
        return real(url, _FullDisk(temp_file, where, capacity), *args, **kwargs)

    file_download.http_get = http_get
    os.pwrite = pwrite
    try:
        yield
    finally:
        file_download.http_get = real
        os.pwrite = real_pwrite


@contextlib.contextmanager
def _faults(
    flock: str,
    env: Mapping[str, str | None] | None,
    umask: int | None,
    *,
    dump_after: float | None = None,
    disk_budget: int | None = None,
    disk_root: str | None = None,
) -> Iterator[None]:
    with (
        _dump_if_stuck(dump_after),
        call_env(env),
        faulty_flock(flock),
        _umask(umask),
        disk_full_after(disk_budget, disk_root),
    ):
        yield


def load_under_faults(
    repo_id: str,
    subfolder: str = "",
    *,
    flock: str = "ok",
    env: Mapping[str, str | None] | None = None,
    umask: int | None = None,
    dump_after: float | None = 90.0,
    disk_budget: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`~hub_prefetch.testing.protected_targets.protected_from_pretrained` inside the given faults;
    the loader's result plus the process id. A call still running after ``dump_after`` seconds prints
    its threads' stacks to stderr (kept in the worker's result)."""
    protected = importlib.import_module("hub_prefetch.testing.protected_targets")
    with _faults(
        flock, env, umask, dump_after=dump_after, disk_budget=disk_budget, disk_root=kwargs.get("cache_dir")
    ):
        value: dict[str, Any] = protected.protected_from_pretrained(repo_id, subfolder, **kwargs)
    value["pid"] = os.getpid()
    return value


def prefetch_under_faults(
    repo_id: str,
    subfolders: list[str] | None = None,
    *,
    flock: str = "ok",
    env: Mapping[str, str | None] | None = None,
    umask: int | None = None,
    dump_after: float | None = 90.0,
    disk_budget: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`hub_prefetch.prefetch` inside the given faults; the result as a dict."""
    with _faults(
        flock, env, umask, dump_after=dump_after, disk_budget=disk_budget, disk_root=kwargs.get("cache_dir")
    ):
        result = prefetch(repo_id, subfolders, **kwargs).to_dict()
    result["pid"] = os.getpid()
    return result


def hold_repo_lock(
    cache_dir: str,
    repo_id: str,
    *,
    marker: str,
    release: str | None = None,
    revision: str = "main",
    backend: str | None = None,
    host_id: str | None = None,
    lease_ttl: float | None = None,
    max_hold_s: float = 600.0,
) -> dict[str, Any]:
    """Take the repo lock, write ``marker`` (so the test knows), and keep it until the file ``release``
    exists (never, when None) or ``max_hold_s`` passed: a holder that is stuck, or one to kill."""
    if host_id:
        os.environ["HUB_PREFETCH_HOST_ID"] = host_id  # as a process on another host would be named
    lock = RepoLock(
        cache_dir,
        repo_id,
        revision=revision,
        backend=backend,  # type: ignore[arg-type]
        lease_ttl=lease_ttl,
    )
    t0 = time.monotonic()
    with lock:
        Path(marker).write_text(f"{os.getpid()} {lock.backend}\n")
        while time.monotonic() - t0 < max_hold_s:
            if release and os.path.exists(release):
                break
            time.sleep(0.02)
    return {"pid": os.getpid(), "held_s": time.monotonic() - t0, "backend": lock.backend}


def plain_download(
    repo_id: str, filename: str, cache_dir: str | None = None, **kwargs: Any
) -> dict[str, Any]:
    """``huggingface_hub.hf_hub_download``: a writer outside hub-prefetch's lock (a plain loader)."""
    path = hf_hub_download(repo_id, filename, cache_dir=cache_dir, **kwargs)
    return {"path": path, "size": os.path.getsize(path), "pid": os.getpid()}


_ACTIONS: dict[str, Callable[..., Any]] = {
    "load": load_under_faults,
    "prefetch": prefetch_under_faults,
    "hold_lock": hold_repo_lock,
    "plain_download": plain_download,
}


def dispatch(action: str = "noop", **kwargs: Any) -> Any:
    """One pool target for every action above (``"noop"`` does nothing), so that the same processes,
    imports paid once, can run a different action in each round."""
    if action == "noop":
        return {"pid": os.getpid()}
    return _ACTIONS[action](**kwargs)
