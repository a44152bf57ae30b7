"""Verified prefetch: the request, its side files, the fetcher, the flow and the strict entry points.

Modules, each one concern:

* :mod:`.request` — :class:`Request` and the keyword :class:`RequestOptions` every entry point shares;
* :mod:`.result` — :class:`PrefetchResult`;
* :mod:`.sidefiles` — listings, revision records, stamps and ``.no_exist`` markers;
* :mod:`.fetch` — downloading and repairing the files of one snapshot;
* :mod:`.flow` — :func:`run`: warm check -> lock -> resolve -> select -> fetch -> verify -> stamp;
* :mod:`.api` — :func:`prefetch`, :func:`verify`, :func:`repair`.

Everything named in ``__all__`` is what the rest of the package (loaders, pipeline, distributed, CLI)
builds on.
"""

from __future__ import annotations

from .api import is_local_path, prefetch, repair, verify
from .flow import run, try_warm
from .request import Request, RequestOptions
from .result import PrefetchResult
from .sidefiles import fetch_listing, known_commit, listed_path, record_revision

__all__ = [
    "PrefetchResult",
    "Request",
    "RequestOptions",
    "fetch_listing",
    "is_local_path",
    "known_commit",
    "listed_path",
    "prefetch",
    "record_revision",
    "repair",
    "run",
    "try_warm",
    "verify",
]
