"""How a file is split into byte ranges, and the record that lets the next lock holder resume them.

A file below twice the part size comes over one stream; a larger one is cut into ranges of the part size,
queued in file order, so one big shard fills every connection and its front advances steadily: the hash,
which can only follow the contiguous front, runs during the download instead of reading most of the file
back after its last byte (as it did with equal ranges, one per connection, that all finish together).

A single stream writes in order, so the partial file's length is its progress. Split files keep their
ranges' progress in ``<partial>.parts``, a small binary record mapped into memory and updated after every
chunk is written: a store to memory, no system call, and the page cache keeps it when the writer is
killed, so the next holder resumes at the last written chunk. (After a machine crash the record may claim
bytes the disk lost: whatever is resumed is hashed again from the first byte before anything is
published, and a mismatch is fetched again.)
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Part",
    "PartsRecord",
    "contiguous_prefix",
    "drop_parts",
    "load_parts",
    "plan_parts",
    "read_record",
    "sidecar",
]

_MAGIC = b"HPFPART1"
_HEAD = struct.Struct("<8sQQ")  # magic, file size, number of parts
_ENTRY = struct.Struct("<QQQ")  # start, end, done


@dataclass
class Part:
    """Bytes ``[start, end)`` of a file, of which the first ``done`` are on disk."""

    start: int
    end: int | None  # None: the size is unknown (a mirror that lists none): read to the end
    done: int = 0
    index: int = 0

    @property
    def complete(self) -> bool:
        return self.end is not None and self.start + self.done >= self.end

    @property
    def offset(self) -> int:
        return self.start + self.done


def plan_parts(size: int | None, *, part_size: int, connections: int) -> list[Part]:
    if size is None:
        return [Part(0, None)]
    if size < 2 * part_size or connections < 2:
        return [Part(0, size)]
    n = math.ceil(size / part_size)
    step = math.ceil(size / n)  # ranges of equal length, none longer than the part size
    return [Part(start, min(start + step, size), 0, i) for i, start in enumerate(range(0, size, step))]


def sidecar(partial: Path) -> Path:
    return partial.with_name(partial.name + ".parts")


def read_record(path: Path, size: int) -> list[Part] | None:
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if len(raw) < _HEAD.size:
        return None
    magic, recorded, n = _HEAD.unpack_from(raw)
    if magic != _MAGIC or recorded != size or n < 2 or len(raw) != _HEAD.size + n * _ENTRY.size:
        return None
    parts = []
    for i in range(n):
        start, end, done = _ENTRY.unpack_from(raw, _HEAD.size + i * _ENTRY.size)
        parts.append(Part(start, end, done, i))
    front = 0
    for p in parts:
        assert p.end is not None
        if p.start != front or not 0 <= p.done <= p.end - p.start:
            return None
        front = p.end
    return parts if front == size else None


def contiguous_prefix(parts: list[Part]) -> int:
    """How many bytes from the start of the file are on disk: the front a reader may follow."""
    front = 0
    for p in parts:
        if p.start != front:
            break
        front = p.offset
        if not p.complete:
            break
    return front


def load_parts(partial: Path, size: int | None, planned: list[Part]) -> list[Part]:
    """The progress to resume from: a split download's record, or a single stream's length."""
    try:
        have = os.stat(partial).st_size
    except FileNotFoundError:
        drop_parts(partial)
        return planned
    if size is None:
        return planned
    recorded = read_record(sidecar(partial), size)
    if recorded is not None:
        return recorded
    if len(planned) == 1 and not os.path.exists(sidecar(partial)):
        return [Part(0, size, min(have, size))]
    return [Part(p.start, p.end, 0, p.index) for p in planned]  # nothing we can trust: start over


class PartsRecord:
    """The memory-mapped progress record of a split download (a no-op for a single stream)."""

    def __init__(self, partial: Path, size: int | None, parts: list[Part]) -> None:
        self._map: mmap.mmap | None = None
        if size is None or len(parts) < 2:
            return
        data = _HEAD.pack(_MAGIC, size, len(parts)) + b"".join(
            _ENTRY.pack(p.start, p.end, p.done) for p in parts
        )
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(sidecar(partial), flags, 0o664)
        try:
            os.ftruncate(fd, len(data))
            os.pwrite(fd, data, 0)
            self._map = mmap.mmap(fd, len(data))
        finally:
            os.close(fd)

    def update(self, part: Part) -> None:
        if self._map is not None:
            struct.pack_into("<Q", self._map, _HEAD.size + part.index * _ENTRY.size + 16, part.done)

    def close(self) -> None:
        if self._map is not None:
            with contextlib.suppress(ValueError, OSError):
                self._map.close()
            self._map = None


def drop_parts(partial: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(sidecar(partial))
