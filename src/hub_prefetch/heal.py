"""Loaders that cannot race: a verified prefetch, a commit-pinned offline load, and healing of the two
partial-cache shapes (and nothing else).

The two shapes, both cured by a complete cache:

* ``OSError: <repo> does not appear to have a file named <sub>/model-0000X-of-0000Y.safetensors``
* ``RuntimeError: ... You set `ignore_mismatched_sizes` to `False` ...``, after transformers silently
  fell back to a default config because ``config.json`` was not there yet.

CUDA out-of-memory, a real config error, no access, no such repo: raised at once, unchanged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any, TypeVar

from . import errors
from .besteffort import may_fall_back
from .prefetch import PrefetchResult, Request, is_local_path, listed_path, run
from .settings import Settings

__all__ = ["DEFAULT_MAX_ATTEMPTS", "LoadFailure", "classify_load_error", "from_pretrained_with_prefetch"]

logger = logging.getLogger("hub_prefetch.heal")
T = TypeVar("T")

_MISSING_RE = re.compile(r"does not appear to have (?:a file named|files named)\s+\(?([^\s,()]+)")
_DIFFUSERS_MISSING_RE = re.compile(r"Error no file named (\S+) found in directory")
# What a commit-pinned ``local_files_only`` load says when a file it needs vanished from the cache.
_CACHE_MISS_RE = re.compile(
    r"couldn't find (?:them|it) in the cached files"
    r"|Cannot find the requested files in the (?:local|disk) cache"
)
_MISMATCH_RE = re.compile(r"ignore_mismatched_sizes\W{0,3}\s+to\s+\W{0,3}False")
DEFAULT_MAX_ATTEMPTS = 3


class LoadFailure(Enum):
    MISSING_FILE = "missing_file"
    MISMATCHED_SIZES = "mismatched_sizes"


def classify_load_error(exc: BaseException) -> tuple[LoadFailure, str | None] | None:
    """The partial-cache shape of a loader error and the file it names, or None if it is another error."""
    text = str(exc)
    if isinstance(exc, OSError) and not isinstance(exc, errors.HubPrefetchError):
        match = _MISSING_RE.search(text) or _DIFFUSERS_MISSING_RE.search(text)
        if match:
            return LoadFailure.MISSING_FILE, match.group(1).rstrip(".")
        if _CACHE_MISS_RE.search(text):
            return LoadFailure.MISSING_FILE, None
    if isinstance(exc, RuntimeError) and _MISMATCH_RE.search(text):
        return LoadFailure.MISMATCHED_SIZES, None
    return None


def _prefetch(req: Request, *, force_check: bool) -> PrefetchResult | None:
    try:
        return run(req, force_check=force_check)
    except Exception as exc:
        # Best-effort, as in the reference: the loader's own error is the one to show.
        if not may_fall_back(exc, what=req.label, logger=logger, then="loading without it"):
            raise
        return None


def from_pretrained_with_prefetch(
    factory: Callable[..., T],
    model: str,
    *,
    subfolder: str | None = None,
    prefetch_list: Iterable[str] | None = None,
    local_files_only: bool = False,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    prefetch_weights: bool = True,
    settings: Settings | None = None,
    lock_timeout: float | None = None,
    **from_pretrained_kwargs: Any,
) -> T:
    """Call ``factory`` (a bound ``SomeModel.from_pretrained``) on a verified, commit-pinned snapshot.

    The load gets ``revision=<commit>`` and ``local_files_only=True``: it makes no network request
    and never reads a ref file a peer may be rewriting, while the loaded object still names
    ``model``. The two partial-cache shapes are healed by a verified re-prefetch (which repairs)
    and a reload, up to ``max_attempts`` loads; everything else is raised at once. Local paths and
    ``local_files_only`` loads raise on the first failure. ``prefetch_weights=False`` fetches configs
    and tokenizer files only, for loaders of configs, tokenizers, processors and schedulers.
    ``settings`` and ``lock_timeout`` are hub-prefetch's own (see :func:`hub_prefetch.prefetch`); the
    other keywords go to ``factory``.
    """
    kwargs = dict(from_pretrained_kwargs)
    if subfolder is not None:
        kwargs["subfolder"] = subfolder
    if is_local_path(model) or local_files_only:
        return factory(model, local_files_only=local_files_only, **kwargs)
    subfolders = list(dict.fromkeys([*(prefetch_list or []), subfolder or ""]))
    req = Request.build(
        model,
        subfolders,
        revision=kwargs.pop("revision", None),
        repo_type=kwargs.pop("repo_type", None),
        variant=kwargs.get("variant"),
        token=kwargs.get("token"),
        cache_dir=kwargs.get("cache_dir"),
        weights=prefetch_weights,
        settings=settings,
        lock_timeout=lock_timeout,
    )
    result = _prefetch(req, force_check=False)
    offline = True
    attempt = 0
    while True:
        attempt += 1
        pinned = {**kwargs, "revision": result.commit, "local_files_only": offline} if result else {**kwargs}
        if not result and req.revision != "main":
            pinned["revision"] = req.revision
        try:
            return factory(model, **pinned)
        except (OSError, RuntimeError) as exc:
            shape = classify_load_error(exc)
            if shape is None or attempt >= max_attempts:
                raise
            kind, named = shape
            if (
                kind is LoadFailure.MISSING_FILE
                and result
                and named
                and not listed_path(req, result.commit, named)
            ):
                raise  # the repo really lacks it: no prefetch can heal that
            logger.warning(
                "%s: %s (%s) on load attempt %d/%d; re-verifying the snapshot and reloading",
                req.label,
                kind.value,
                named or "config",
                attempt,
                max_attempts,
            )
            wants_more = bool(named and result and named not in result.files) or attempt >= 2
            if kind is LoadFailure.MISSING_FILE and wants_more and not req.all_files:
                # The loader wants a file our selection left out (or the same shape came back after a
                # repair): take the whole subfolders from now on.
                req = Request.build(
                    model,
                    subfolders,
                    revision=result.commit if result else req.revision,
                    repo_type=req.repo_type,
                    variant=req.variant,
                    token=req.token,
                    all_files=True,
                    settings=req.settings,
                    weights=req.weights,
                )
            healed = _prefetch(req, force_check=True)
            unchanged = healed is not None and not (healed.downloaded or healed.repaired)
            if unchanged and offline and named is None and kind is LoadFailure.MISSING_FILE:
                # The verified snapshot is whole, yet the offline load missed a file it probes that no
                # marker says is absent: let the next load ask the Hub, still pinned to the commit (no
                # ref is read); huggingface_hub then records the absence for every later load.
                offline = False
            elif attempt >= 2 and unchanged:
                raise  # a second repair found nothing to fix: reloading would fail the same way
            result = healed or result
