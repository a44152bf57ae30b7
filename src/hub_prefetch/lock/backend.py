"""The one shape both lock backends have: :class:`~hub_prefetch.lock.flock.FlockBackend` and
:class:`~hub_prefetch.lock.lease.Lease`.

:class:`~hub_prefetch.lock.RepoLock` creates one backend object per acquisition, once its thread has
won the in-process gate, and drives it only through this protocol: ``try_acquire`` until it returns
True, then ``release``; ``close`` when the wait ends without the lock (a timeout, a cancellation, an
error) and, in a forked child, for every hold it inherited (which the child must neither refresh nor
release). ``holder`` names whoever holds the lock, for "still waiting" lines and timeouts;
``still_held`` is the fencing check a holder makes before each step that publishes into the cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .identity import HolderInfo

__all__ = ["Backend"]


class Backend(Protocol):
    """One contender's hold on one lock file, for one acquisition."""

    path: Path
    held: bool
    """True from a won ``try_acquire`` until ``release`` or ``close``."""

    def try_acquire(self) -> bool:
        """One non-blocking attempt: True when this contender now holds the lock."""
        ...

    def still_held(self) -> bool:
        """Fencing: whether the lock this contender won is still its own (cheap: a stat or a read)."""
        ...

    def release(self) -> None:
        """Give up a held lock."""
        ...

    def close(self) -> None:
        """Drop this contender without releasing anything: the lock was not won, or is the parent's."""
        ...

    def holder(self) -> HolderInfo | None:
        """The holder as this contender sees it (None when unknown or free)."""
        ...
