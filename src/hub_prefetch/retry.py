"""Hub errors classified once, in one place, and the bounded retry loop built on that.

Never retried (the answer will not change): no such repo / revision / file, gated or no access,
a bad request, offline mode. Retried with exponential backoff and full jitter, honouring
``Retry-After``: 5xx, 429, dropped or refused connections, timeouts, a body shorter than announced.
A full disk or read-only cache is neither: it becomes :class:`CacheWriteError` at once.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.errors import (
    GatedRepoError as HfGatedRepoError,
)

from . import errors
from .settings import Settings

__all__ = ["Verdict", "backoff_delay", "call_with_retries", "classify", "transient_or_raise"]

logger = logging.getLogger("hub_prefetch.retry")
T = TypeVar("T")

_TRANSIENT_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM}
# httpx and httpx2 (huggingface_hub 1.x and 2.x) share these class names; matching names keeps us
# independent of which one is installed.
_TRANSPORT_NAMES = {
    "TransportError",
    "TimeoutException",
    "NetworkError",
    "RemoteProtocolError",
    "ProtocolError",
}


@dataclass(frozen=True)
class Verdict:
    """What to do with an exception: ``error`` to raise now, or ``retry`` after ``delay`` (None: backoff)."""

    retry: bool
    error: BaseException
    delay: float | None = None


def _retry_after(exc: HfHubHTTPError) -> float | None:
    response = getattr(exc, "response", None)
    raw = response.headers.get("Retry-After") if response is not None else None
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


def _status(exc: HfHubHTTPError) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def classify(exc: BaseException, *, what: str) -> Verdict:
    """Map an exception from huggingface_hub (or the OS) to a retry decision and a typed error."""
    if isinstance(exc, errors.HubPrefetchError):
        return Verdict(False, exc)
    if isinstance(exc, HfGatedRepoError):
        return Verdict(
            False, errors.GatedRepoError(f"{what}: access is gated and no valid token was sent ({exc})")
        )
    if isinstance(exc, RepositoryNotFoundError):
        return Verdict(False, errors.RepoNotFound(f"{what}: no such repository, or no access to it"))
    if isinstance(exc, RevisionNotFoundError):
        return Verdict(False, errors.RevisionNotFound(f"{what}: no such revision"))
    if isinstance(exc, LocalEntryNotFoundError):
        # huggingface_hub raises this when its HEAD failed and no cached copy exists: the cause (an
        # outage, a refused connection, a 404) decides, not the class, which subclasses "not found".
        cause = exc.__cause__ or exc.__context__
        if cause is None or cause is exc:
            return Verdict(True, exc)
        inner = classify(cause, what=what)
        return inner if not inner.retry else Verdict(True, exc, inner.delay)
    if isinstance(exc, EntryNotFoundError):
        return Verdict(False, errors.EntryNotFound(f"{what}: no such file in the repo"))
    if isinstance(exc, OfflineModeIsEnabled):
        return Verdict(
            False, errors.OfflineCacheMissError(f"{what}: offline mode is on and the cache misses it")
        )
    if isinstance(exc, HfHubHTTPError):
        status = _status(exc)
        if status in (401, 403):
            return Verdict(False, errors.GatedRepoError(f"{what}: access refused (HTTP {status})"))
        if status is not None and status in _TRANSIENT_STATUS:
            return Verdict(True, exc, _retry_after(exc))
        if status is not None and status < 500:
            return Verdict(
                False, errors.HubAccessError(f"{what}: the Hub refused the request (HTTP {status})")
            )
        return Verdict(True, exc)
    if any(cls.__name__ in _TRANSPORT_NAMES for cls in type(exc).__mro__):
        return Verdict(True, exc)
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
        return Verdict(
            False,
            errors.CacheWriteError(f"{what}: cannot write the cache: {exc.strerror or exc}", errno=exc.errno),
        )
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return Verdict(True, exc)
    # huggingface_hub raises a bare OSError("Consistency check failed ...") when a body ends short.
    if type(exc) is OSError and "consistency check failed" in str(exc).lower():
        return Verdict(True, exc)
    return Verdict(False, exc)


def backoff_delay(attempt: int, *, first: float, cap: float, hint: float | None = None) -> float:
    """The wait before retry number ``attempt`` (1-based): exponential from ``first``, capped at ``cap``,
    with full jitter. A server's ``hint`` (``Retry-After``) wins, bounded by ``max(cap, 60)`` s.

    The one backoff of hub-prefetch: Hub requests and the loaders' missing-shard retries both use it.
    """
    if hint is not None:
        return min(hint, max(cap, 60.0))
    return random.uniform(0, min(cap, first * 2 ** (attempt - 1)))


def transient_or_raise(exc: Exception, *, what: str, attempt: int, settings: Settings) -> float:
    """Inside an ``except``: raise the typed error of what cannot heal, or of the last allowed attempt;
    otherwise the delay before attempt ``attempt + 1``."""
    verdict = classify(exc, what=what)
    if not verdict.retry:
        if verdict.error is exc:
            raise exc
        raise verdict.error from exc
    if attempt >= settings.max_attempts:
        raise errors.HubUnavailableError(
            f"{what}: still failing after {attempt} attempts: {exc}", attempts=attempt
        ) from exc
    return backoff_delay(attempt, first=settings.backoff, cap=settings.backoff_max, hint=verdict.delay)


def call_with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    settings: Settings,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``fn``; retry what :func:`classify` calls transient, at most ``settings.max_attempts`` times."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified: raised typed, or retried
            delay = transient_or_raise(exc, what=what, attempt=attempt, settings=settings)
            logger.info("%s: %s; retry %d/%d in %.2f s", what, exc, attempt, settings.max_attempts - 1, delay)
            sleep(delay)
