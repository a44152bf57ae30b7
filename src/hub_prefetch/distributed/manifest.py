"""What the fan-out transfers: the commit, its listing, and the selected files grouped into items (one
per blob), in the order the source sends them (metadata first, then the weights)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..engine import etag_of
from ..prefetch import Request
from ..prefetch.flow import select
from ..verify import ExpectedFile

__all__ = ["Item", "Manifest", "build_manifest"]

_DIGEST = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


@dataclass(frozen=True)
class Item:
    """One blob to transfer: its etag, size and digest, and every selected path that points at it."""

    etag: str
    expected: ExpectedFile
    paths: tuple[str, ...]

    @property
    def size(self) -> int:
        return int(self.expected.size or 0)


@dataclass(frozen=True)
class Manifest:
    commit: str
    listing: dict[str, ExpectedFile]
    selected: tuple[str, ...]
    items: tuple[Item, ...]
    hub_only: tuple[str, ...]  # selected files the listing gives no digest for: each domain asks the Hub

    @classmethod
    def build(cls, commit: str, listing: dict[str, ExpectedFile], order: list[str]) -> Manifest:
        items: dict[str, list[str]] = {}
        hub_only: list[str] = []
        for path in order:
            etag = etag_of(listing[path])
            # A peer's manifest names files in this cache: only a real digest may name a blob.
            if etag is None or listing[path].size is None or not _DIGEST.fullmatch(etag):
                hub_only.append(path)
            else:
                items.setdefault(etag, []).append(path)
        return cls(
            commit,
            listing,
            tuple(sorted(order)),
            tuple(Item(etag, listing[paths[0]], tuple(paths)) for etag, paths in items.items()),
            tuple(hub_only),
        )

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "commit": self.commit,
                "listing": {p: e.to_json() for p, e in self.listing.items()},
                "order": [p for item in self.items for p in item.paths] + list(self.hub_only),
            }
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        data = json.loads(raw)
        listing = {p: ExpectedFile.from_json(p, e) for p, e in data["listing"].items()}
        return cls.build(str(data["commit"]), listing, [str(p) for p in data["order"]])

    @property
    def bytes_total(self) -> int:
        return sum(int(self.listing[p].size or 0) for p in self.selected)


def build_manifest(
    req: Request, commit: str, read: Callable[[str], bytes], listing_of: Callable[[], Any]
) -> Manifest:
    """The manifest of ``req``'s selection at ``commit``; ``read`` gives a metadata file's bytes."""
    listing: dict[str, ExpectedFile] = listing_of()
    selection = select(req, listing, read)
    order = sorted(selection.metadata) + sorted(set(selection.weights) - set(selection.metadata))
    return Manifest.build(commit, listing, order)
