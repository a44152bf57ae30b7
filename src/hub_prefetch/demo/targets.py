"""Worker targets of ``hub-prefetch demo``: the plain and the protected load, with fault switches that act
inside the worker process.

Fault switches are environment variables read when this module is imported, which the worker does
before it reports READY, so before huggingface_hub or hub-prefetch take any lock:

``HUB_PREFETCH_TESTING_NOOP_FLOCK=1``
    ``fcntl.flock`` returns at once and locks nothing, as on a Lustre, GPFS or NFS mount where ``flock``
    is accepted but excludes no one. filelock (and so huggingface_hub's per-blob lock) and hub-prefetch's
    backend probe both call the patched function.

The scenario overview forks every scenario's workers from one interpreter, so it passes the switches per
call instead: ``env={...}`` updates the forked worker's own environment (and so its
:class:`~hub_prefetch.settings.Settings`, read at call time) and applies the ``flock`` switch before the
load takes any lock.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from .faults import NOOP_FLOCK_ENV

__all__ = ["noop_flock_active", "plain", "protected"]


def _noop_flock(fd: Any, operation: int) -> None:
    del fd, operation


def noop_flock_active() -> bool:
    """Whether ``fcntl.flock`` is the no-op in this process."""
    return fcntl.flock is _noop_flock


def _switch_on(env: dict[str, str] | None) -> None:
    """Apply the per-call switches in this (forked, single-use) worker process."""
    if env:
        os.environ.update(env)
    if os.environ.get(NOOP_FLOCK_ENV, "").strip().lower() in ("1", "true", "yes"):
        fcntl.flock = _noop_flock


_switch_on(None)

# After the patch on purpose, though every user looks fcntl.flock up at call time anyway.
from ..testing import protected_targets, targets  # noqa: E402


def plain(
    repo_id: str, subfolder: str = "", env: dict[str, str] | None = None, **kwargs: Any
) -> dict[str, Any]:
    """``transformers.AutoModel.from_pretrained(repo_id, subfolder=...)``, nothing else."""
    _switch_on(env)
    value = targets.plain_from_pretrained(repo_id, subfolder=subfolder, **kwargs)
    return {"fingerprint": value["fingerprint"], "noop_flock": noop_flock_active()}


def protected(
    repo_id: str, subfolder: str = "", env: dict[str, str] | None = None, **kwargs: Any
) -> dict[str, Any]:
    """The same load through :func:`hub_prefetch.from_pretrained_with_prefetch`; also reports the lock
    backend this process chose (``auto`` probes the folder, with this process's ``flock``)."""
    _switch_on(env)
    from hub_prefetch.lock import RepoLock  # noqa: PLC0415 - after the patch, with the worker's env
    from hub_prefetch.settings import Settings  # noqa: PLC0415

    value = protected_targets.protected_from_pretrained(repo_id, subfolder=subfolder, **kwargs)
    cache = kwargs.get("cache_dir") or Settings.from_env().cache_dir
    backend = RepoLock(cache, repo_id).backend
    return {
        "fingerprint": value["fingerprint"],
        "commit": value["commit"],
        "noop_flock": noop_flock_active(),
        "lock_backend": backend,
    }
