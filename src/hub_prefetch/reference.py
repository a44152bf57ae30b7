"""The reference API, kept working with the same names and meaning.

hub-prefetch started from a best-effort helper with three functions; code written against it keeps
running unchanged:

* :func:`prefetch_subfolders` — best effort: materialise the files a load of some subfolders needs,
  log and swallow Hub failures so the caller's own ``from_pretrained`` shows the specific error.
  Now verified, commit-pinned and under a lock that works on every filesystem.
* :func:`~hub_prefetch.heal.from_pretrained_with_prefetch` — a verified prefetch, then a commit-pinned
  offline load that heals the two partial-cache shapes (it lives with the loaders in
  :mod:`hub_prefetch.heal`).
* :func:`retry_on_missing_shard` — retry only the "does not appear to have a file named" shape.

New code wants the strict :func:`hub_prefetch.prefetch` (typed errors) or the loaders.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .besteffort import may_fall_back
from .heal import DEFAULT_MAX_ATTEMPTS, LoadFailure, classify_load_error, from_pretrained_with_prefetch
from .prefetch import PrefetchResult, is_local_path, prefetch
from .retry import backoff_delay
from .settings import Settings

__all__ = ["from_pretrained_with_prefetch", "prefetch_subfolders", "retry_on_missing_shard"]

logger = logging.getLogger("hub_prefetch.reference")
T = TypeVar("T")


def prefetch_subfolders(
    model: str,
    subfolders: Iterable[str],
    *,
    local_files_only: bool | None = None,
    include_root_metadata: bool = True,
    revision: str | None = None,
    repo_type: str | None = None,
    variant: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    strict: bool = False,
    settings: Settings | None = None,
    lock_timeout: float | None = None,
) -> PrefetchResult | None:
    """Materialise ``model``'s ``subfolders`` in the HF cache before loading (the reference API).

    Best-effort unless ``strict``: a failure is logged once and swallowed, so the caller's own
    ``from_pretrained`` surfaces the specific error (a bad request, ``MemoryError``, ``KeyboardInterrupt``
    are raised; see :mod:`hub_prefetch.besteffort`). Local directories and ``local_files_only``
    loads are a no-op. Returns what was prepared, or None when nothing was (or it failed).
    """
    if is_local_path(model):
        return None
    if local_files_only and not strict:
        return None
    try:
        return prefetch(
            model,
            list(subfolders),
            revision=revision,
            repo_type=repo_type,
            variant=variant,
            include_root_metadata=include_root_metadata,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            settings=settings,
            lock_timeout=lock_timeout,
        )
    except Exception as exc:
        if strict or not may_fall_back(exc, what=str(model), logger=logger, then="skipped"):
            raise
        return None


def retry_on_missing_shard(
    load_fn: Callable[..., T],
    *args: Any,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    initial_delay: float | None = None,
    max_delay: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    **kwargs: Any,
) -> T:
    """Call ``load_fn(*args, **kwargs)``; retry only the "does not appear to have a file named" shape.

    The waits are hub-prefetch's one backoff (exponential, full jitter, capped): from
    ``initial_delay`` up to ``max_delay`` seconds, by default ``HUB_PREFETCH_BACKOFF`` and
    ``HUB_PREFETCH_BACKOFF_MAX``. Anything else is raised at once.
    """
    attempt = 0
    first = cap = None
    while True:
        attempt += 1
        try:
            return load_fn(*args, **kwargs)
        except OSError as exc:
            shape = classify_load_error(exc)
            if shape is None or shape[0] is not LoadFailure.MISSING_FILE or attempt >= max_attempts:
                raise
            if first is None or cap is None:
                settings = Settings.from_env()
                first = settings.backoff if initial_delay is None else initial_delay
                cap = settings.backoff_max if max_delay is None else max_delay
            delay = backoff_delay(attempt, first=first, cap=cap)
            logger.warning(
                "missing %s (attempt %d/%d); retrying in %.2f s", shape[1], attempt, max_attempts, delay
            )
            sleep(delay)
