"""hub-prefetch: load one HuggingFace Hub model from many processes at once, safely.

Exactly one process downloads; every other waits, then loads a verified, commit-pinned snapshot
without a network call. Broken caches are repaired file by file; real errors surface at once.

The public surface, by what you are doing:

* **prepare a load, strictly** (typed errors): :func:`prefetch`, :func:`verify`, :func:`repair`;
  for a diffusers pipeline :func:`prefetch_pipeline`; in a ``torch.distributed`` job
  :func:`prefetch_distributed`;
* **load**: :func:`from_pretrained_with_prefetch` around one ``from_pretrained``, or
  :func:`protected_loads` around every one in a block (``hub_prefetch.patch.install()`` for good);
* **the reference API**, kept working: :func:`prefetch_subfolders` (best effort),
  :func:`from_pretrained_with_prefetch`, :func:`retry_on_missing_shard` (see :mod:`hub_prefetch.reference`);
* **the pieces**: :class:`RepoLock`, :class:`Settings`, the results, and the error tree (the root and its
  direct branches here; every class in :mod:`hub_prefetch.errors`).

Logging: every module logs to a ``hub_prefetch.<module>`` logger and the library configures nothing, not
even a ``NullHandler``, on purpose. In an application that configured no logging, Python's last-resort
handler then prints our WARNING and ERROR lines to stderr ("took over stale lock ...", "lost the lease ...",
"repairing ...") — things an operator of a many-worker job should see — and stays silent below WARNING. An
application that configures logging gets them through its own handlers, as usual. Only the CLI sets up
output.
"""

from __future__ import annotations

from . import errors
from .distributed import prefetch_distributed
from .errors import (
    CacheWriteError,
    HubAccessError,
    HubPrefetchError,
    HubUnavailableError,
    IncompleteSnapshotError,
    InvalidRequestError,
    LockTimeout,
    OfflineCacheMissError,
)
from .heal import from_pretrained_with_prefetch
from .lock import RepoLock
from .patch import protected_loads
from .pipeline import prefetch_pipeline
from .prefetch import PrefetchResult, prefetch, repair, verify
from .reference import prefetch_subfolders, retry_on_missing_shard
from .settings import Settings
from .verify import VerifyReport

__version__ = "0.1.0"

__all__ = [
    "CacheWriteError",
    "HubAccessError",
    "HubPrefetchError",
    "HubUnavailableError",
    "IncompleteSnapshotError",
    "InvalidRequestError",
    "LockTimeout",
    "OfflineCacheMissError",
    "PrefetchResult",
    "RepoLock",
    "Settings",
    "VerifyReport",
    "__version__",
    "errors",
    "from_pretrained_with_prefetch",
    "prefetch",
    "prefetch_distributed",
    "prefetch_pipeline",
    "prefetch_subfolders",
    "protected_loads",
    "repair",
    "retry_on_missing_shard",
    "verify",
]
