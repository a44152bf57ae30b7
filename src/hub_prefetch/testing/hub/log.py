"""The request log of the local Hub (:class:`~hub_prefetch.testing.hub.client.LocalHub`): one record per
Hub request."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["KINDS", "RequestRecord", "bytes_served", "counts", "times_served"]

#: "revision": model_info / repo_info / the revision API; "tree": tree listings; "head": HEAD on a file;
#: "get": GET on a file (the Hub's /resolve or the CDN it redirects to); "other": every other API call.
KINDS = ("revision", "tree", "head", "get", "other")


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it.

    ``bytes_sent`` counts body bytes handed to the socket; ``complete`` is True once every byte the response
    promised was sent (False while in progress, or when a fault or the client cut it short). ``t_start`` and
    ``t_end`` are ``time.time()`` values (``t_end`` is None while in progress), comparable across processes.
    ``range_start``/``range_end`` give the byte range of a 206 answer (inclusive end), else None.
    """

    method: str
    path: str
    kind: str
    status: int | None
    bytes_sent: int
    repo_id: str | None
    filename: str | None
    revision: str | None
    t_start: float
    t_end: float | None
    complete: bool
    repo_type: str | None = None
    commit: str | None = None
    size: int | None = None
    range_start: int | None = None
    range_end: int | None = None
    fault: str | None = None
    #: whether the request carried an ``Authorization`` header (a token must never reach the CDN)
    auth: bool = False

    @property
    def full_body(self) -> bool:
        """A complete GET of the whole file (not a range of it)."""
        return self.kind == "get" and self.complete and self.status == 200

    def to_json(self) -> dict[str, Any]:
        """Every field as plain data (how the Hub process reports its log)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RequestRecord:
        """The record :meth:`to_json` wrote; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def counts(records: Iterable[RequestRecord]) -> dict[str, int]:
    out = dict.fromkeys(KINDS, 0)
    for r in records:
        out[r.kind] = out.get(r.kind, 0) + 1
    return out


def bytes_served(records: Iterable[RequestRecord], filename_glob: str = "*") -> int:
    return sum(
        r.bytes_sent
        for r in records
        if r.kind == "get" and r.filename is not None and fnmatch.fnmatchcase(r.filename, filename_glob)
    )


def times_served(records: Iterable[RequestRecord], filename: str) -> int:
    return sum(1 for r in records if r.full_body and r.filename == filename)
