"""What a best-effort prefetch does with an exception: one rule for every entry point.

``prefetch_subfolders``, the loaders (:func:`~hub_prefetch.from_pretrained_with_prefetch`) and the
patched ``from_pretrained`` (:func:`~hub_prefetch.install`) prefetch on a best-effort basis: when the
prefetch cannot help, the caller's own load runs unprotected and shows its own, specific error (or
loads what the cache already has, e.g. offline over a cache filled by plain huggingface_hub).

* raised, typed: a bad request (:class:`~hub_prefetch.errors.InvalidRequestError`) — the load would
  fail the same way and retrying cannot heal it;
* raised, untouched: ``KeyboardInterrupt``, ``SystemExit`` (never caught: they are not ``Exception``)
  and ``MemoryError`` — the process must stop, not carry on without a prefetch;
* logged once per (model, error type) and fallen back on: everything else, typed
  (:class:`~hub_prefetch.errors.HubPrefetchError`: no access, not found, offline cache miss, read-only
  cache, lock timeout, Hub down) or foreign (an error of a proxy, a network filesystem, the Xet client,
  that :mod:`hub_prefetch.retry` does not know), so that nothing untyped escapes a best-effort call.
"""

from __future__ import annotations

import logging
import threading

from . import errors

__all__ = ["may_fall_back"]

_reported: set[tuple[str, str]] = set()
_reported_guard = threading.Lock()


def may_fall_back(exc: Exception, *, what: str, logger: logging.Logger, then: str) -> bool:
    """True (after a log line) when a best-effort caller may carry on without its prefetch; False
    when it must re-raise ``exc``. ``then`` says what the caller does instead, for the log line::

        except Exception as exc:
            if not may_fall_back(exc, what=label, logger=logger, then="loading without it"):
                raise
    """
    if isinstance(exc, (errors.InvalidRequestError, MemoryError)):
        return False
    key = (what, type(exc).__name__)
    with _reported_guard:
        first = key not in _reported
        _reported.add(key)
    typed = isinstance(exc, errors.HubPrefetchError)
    # A foreign error is worth a traceback at DEBUG: it is the one a bug report needs.
    logger.log(
        logging.WARNING if first else logging.DEBUG,
        "prefetch of %s failed (%s%s: %s); %s",
        what,
        type(exc).__name__,
        "" if typed else ", not a known hub-prefetch error",
        exc,
        then,
        exc_info=not typed and logger.isEnabledFor(logging.DEBUG),
    )
    return True
