"""One file on its way into the cache: its partial file, its ranges, and the hash that follows them.

Ranges are written at their offsets by several connections; the digest follows the contiguous prefix,
taking each chunk straight from memory when it lands right at the front (always, for a single stream)
and reading back from the page cache what other ranges wrote ahead of it. Memory stays one chunk per
connection whatever the file's size, and the last byte is hashed moments after it arrives.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from ..verify import ExpectedFile
from .digest import Digest, complete_from_headers
from .parts import Part, PartsRecord, contiguous_prefix, drop_parts, load_parts, plan_parts

__all__ = ["FileJob"]

_READ = 1 << 20


class FileJob:
    """The download of one blob (one etag), which may appear under several paths of the snapshot."""

    def __init__(
        self, expected: ExpectedFile, paths: list[str], partial: Path, *, part_size: int, connections: int
    ) -> None:
        self.expected = expected
        self.paths = paths
        self.partial = partial
        self.attempt = 1  # a digest mismatch is fetched once more, from zero
        self._part_size, self._connections = part_size, connections
        self._state = threading.Lock()
        self._hashing = threading.Lock()
        self.record = PartsRecord(partial, None, [])
        self.fd = -1
        self.parts: list[Part] = []
        self.resumed = 0
        self.digest = Digest(expected)
        self.hashed = 0

    # -- lifecycle ------------------------------------------------------------------------------------
    def open(self, *, fresh: bool = False) -> None:
        """Open the partial file and decide what is left: resumed progress, or everything."""
        size = self.expected.size
        planned = plan_parts(size, part_size=self._part_size, connections=self._connections)
        if fresh:
            self.discard()
        self.parts = load_parts(self.partial, size, planned)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        self.fd = os.open(self.partial, flags, 0o664)
        if len(self.parts) == 1:
            os.ftruncate(self.fd, self.parts[0].done)  # a single stream's bytes beyond its progress are noise
        self.record.close()
        self.record = PartsRecord(self.partial, size, self.parts)
        self.resumed = sum(p.done for p in self.parts)
        self.digest = Digest(self.expected)
        self.hashed = 0

    def reopen_single(self) -> None:
        """The server ignored a Range request: start over as one stream from the first byte."""
        with self._state:
            self.parts = [Part(0, self.expected.size)]
            os.ftruncate(self.fd, 0)
            self.record.close()
            drop_parts(self.partial)
            self.resumed = 0
            self.digest = Digest(self.expected)
            self.hashed = 0

    def close(self) -> None:
        self.record.close()
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        """Drop the partial file and its record (a digest mismatch, or a full disk)."""
        self.close()
        with contextlib.suppress(OSError):
            os.unlink(self.partial)
        drop_parts(self.partial)

    def keep_progress(self) -> None:
        """Close, leaving the partial file and its record for the next holder to resume."""
        self.close()

    # -- progress -------------------------------------------------------------------------------------
    def wrote(self, part: Part, offset: int, chunk: bytes) -> None:
        """``chunk`` is on disk at ``offset`` of ``part``: advance, hash what is contiguous, record."""
        with self._state:
            part.done += len(chunk)
            self.record.update(part)
        self.hash_forward(offset, chunk)

    def _frontier(self) -> int:
        with self._state:
            return contiguous_prefix(self.parts)

    def hash_forward(self, offset: int = -1, chunk: bytes | None = None, *, wait: bool = False) -> None:
        """Hash the contiguous prefix as far as it reaches; whoever holds the hashing lock does it."""
        while self._frontier() > self.hashed:
            if not self._hashing.acquire(blocking=wait):
                return  # the thread that holds it loops until nothing is left, this chunk included
            try:
                while (front := self._frontier()) > self.hashed:
                    if chunk is not None and offset == self.hashed and offset + len(chunk) <= front:
                        self.digest.update(chunk)
                        self.hashed += len(chunk)
                        chunk = None
                        continue
                    data = os.pread(self.fd, min(_READ, front - self.hashed), self.hashed)
                    if not data:
                        return
                    self.digest.update(data)
                    self.hashed += len(data)
            finally:
                self._hashing.release()

    @property
    def complete(self) -> bool:
        return all(p.complete for p in self.parts)

    def learn(self, headers: Mapping[str, str]) -> None:
        """Fill the size and digest a listing lacked from the first response, before any byte is hashed."""
        if self.expected.size is not None and self.digest.kind != "none":
            return
        with self._state:
            learned = complete_from_headers(self.expected, headers)
            if learned != self.expected and self.hashed == 0:
                self.expected = learned
                self.digest = Digest(learned)

    def ended(self, part: Part) -> None:
        """The stream of a part whose size was unknown has ended: its end is where it stopped."""
        with self._state:
            if part.end is None:
                part.end = part.start + part.done

    def received_size(self) -> int:
        return os.fstat(self.fd).st_size
