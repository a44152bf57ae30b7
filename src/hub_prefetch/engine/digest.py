"""The digest the Hub gives for a file, computed while its bytes stream.

LFS files are named by their sha256; every other file by its git blob id, the sha1 of
``b"blob <size>\\0" + content``. Both are what huggingface_hub calls the file's etag and names its blob
after, so one digest both verifies a download and names where it is published.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from ..verify import ExpectedFile

__all__ = ["Digest", "Verdict", "complete_from_headers", "etag_of"]

#: How much a published file was checked: against a digest, only its size, or nothing at all.
Verdict = Literal["verified", "size-checked", "unverified"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")


def _normalize_etag(raw: str | None) -> str | None:
    if not raw:
        return None
    etag = raw.strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    return etag.strip('"').lower() or None


def etag_of(expected: ExpectedFile) -> str | None:
    """The name huggingface_hub gives the file's blob: the sha256 of an LFS file, else the git blob id."""
    return expected.sha256 or expected.blob_id


def complete_from_headers(expected: ExpectedFile, headers: Mapping[str, str]) -> ExpectedFile:
    """Fill a listing entry's missing size and digest from a resolve response's headers.

    A mirror may list files without sizes or hashes; its ``resolve`` answer still carries them, as the
    Hub's does: ``X-Linked-Size`` / ``X-Linked-Etag`` for LFS files, ``ETag`` and the length otherwise.
    A digest learned this way is the server's own claim, and still catches bytes changed in transit.
    """
    size = expected.size
    if size is None:
        for name in ("X-Linked-Size", "Content-Length"):
            raw = headers.get(name)
            if raw and raw.isdigit() and not headers.get("Content-Range"):
                size = int(raw)
                break
        if size is None and (rng := headers.get("Content-Range", "")).rpartition("/")[2].isdigit():
            size = int(rng.rpartition("/")[2])
    sha256, blob_id = expected.sha256, expected.blob_id
    if not sha256 and not blob_id:
        linked = _normalize_etag(headers.get("X-Linked-Etag"))
        plain = _normalize_etag(headers.get("ETag"))
        if linked and _SHA256.fullmatch(linked):
            sha256 = linked
        elif plain and _SHA256.fullmatch(plain):
            sha256 = plain
        elif plain and _SHA1.fullmatch(plain):
            blob_id = plain
    return replace(expected, size=size, sha256=sha256, blob_id=blob_id)


@dataclass
class Digest:
    """An incremental hash of one file, in the kind its listing entry calls for (or none)."""

    expected: ExpectedFile

    def __post_init__(self) -> None:
        e = self.expected
        self._hash: hashlib._Hash | None = None
        if e.sha256:
            self.kind, self.want = "sha256", e.sha256
            self._hash = hashlib.sha256()
        elif e.blob_id and e.size is not None:
            self.kind, self.want = "git-sha1", e.blob_id
            self._hash = hashlib.sha1(f"blob {e.size}\0".encode(), usedforsecurity=False)
        else:
            self.kind, self.want = "none", ""

    def update(self, data: bytes | memoryview) -> None:
        if self._hash is not None:
            self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest() if self._hash is not None else ""

    def matches(self) -> bool:
        """True when there is no digest to compare with (see :attr:`verdict`)."""
        return self._hash is None or self.hexdigest() == self.want

    @property
    def verdict(self) -> Verdict:
        if self._hash is not None:
            return "verified"
        return "size-checked" if self.expected.size is not None else "unverified"
