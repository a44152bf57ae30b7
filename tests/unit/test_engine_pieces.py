"""The engine's pure pieces: range plans, the resume record, digests, headers, progress."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest

from hub_prefetch.engine import Digest, complete_from_headers, etag_of, observe
from hub_prefetch.engine.parts import Part, PartsRecord, load_parts, plan_parts, read_record, sidecar
from hub_prefetch.engine.progress import Progress
from hub_prefetch.engine.publish import safe_repo_path
from hub_prefetch.errors import CorruptRepoFileError
from hub_prefetch.verify import ExpectedFile


@pytest.mark.parametrize(
    ("size", "part", "conns", "n"),
    [
        (None, 10, 8, 1),
        (0, 10, 8, 1),
        (19, 10, 8, 1),
        (20, 10, 8, 2),
        (1000, 10, 8, 100),
        (1005, 10, 8, 101),
        (1000, 10, 1, 1),
    ],
)
def test_plans_cover_the_file_exactly(size, part, conns, n):
    parts = plan_parts(size, part_size=part, connections=conns)
    assert len(parts) == n
    if size:
        assert parts[0].start == 0 and parts[-1].end == size
        assert all(a.end == b.start for a, b in itertools.pairwise(parts))
        assert [p.index for p in parts] == list(range(n))
        assert n == 1 or max(p.end - p.start for p in parts) <= part


def test_the_record_survives_its_writer_and_a_foreign_one_is_ignored(tmp_path: Path):
    partial = tmp_path / "blob"
    partial.write_bytes(b"")
    parts = plan_parts(1000, part_size=250, connections=4)
    record = PartsRecord(partial, 1000, parts)
    parts[1].done = 77
    record.update(parts[1])
    record.close()  # as if the writer died: the mapped page is in the file
    back = read_record(sidecar(partial), 1000)
    assert back is not None and [p.done for p in back] == [0, 77, 0, 0]
    assert load_parts(partial, 1000, plan_parts(1000, part_size=500, connections=2))[1].done == 77
    assert read_record(sidecar(partial), 999) is None  # another size: not ours
    sidecar(partial).write_bytes(b"junk")
    assert [p.done for p in load_parts(partial, 1000, parts)] == [0, 0, 0, 0]


def test_a_single_streams_progress_is_its_length(tmp_path: Path):
    partial = tmp_path / "blob"
    partial.write_bytes(b"x" * 30)
    assert load_parts(partial, 100, [Part(0, 100)]) == [Part(0, 100, 30)]
    assert load_parts(partial, 20, [Part(0, 20)]) == [Part(0, 20, 20)]
    partial.unlink()
    assert load_parts(partial, 100, [Part(0, 100)]) == [Part(0, 100, 0)]


def test_digests_are_the_hubs_etags():
    data = b"hello"
    lfs = ExpectedFile("a", 5, hashlib.sha256(data).hexdigest())
    git = ExpectedFile("b", 5, None, hashlib.sha1(b"blob 5\0" + data).hexdigest())
    for e in (lfs, git):
        d = Digest(e)
        d.update(data[:2])
        d.update(memoryview(data)[2:])
        assert d.matches() and d.verdict == "verified" and d.hexdigest() == etag_of(e)
    bad = Digest(lfs)
    bad.update(b"hellO")
    assert not bad.matches()
    assert Digest(ExpectedFile("c", 5)).verdict == "size-checked"
    assert Digest(ExpectedFile("c", None)).verdict == "unverified"


def test_headers_fill_only_what_the_listing_lacks():
    sha = "a" * 64
    blob = "b" * 40
    bare = ExpectedFile("f", None)
    lfs = complete_from_headers(
        bare, {"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": "12", "ETag": f'"{blob}"'}
    )
    assert (lfs.size, lfs.sha256, lfs.blob_id) == (12, sha, None)
    plain = complete_from_headers(bare, {"ETag": f'W/"{blob}"', "Content-Length": "7"})
    assert (plain.size, plain.sha256, plain.blob_id) == (7, None, blob)
    ranged = complete_from_headers(bare, {"Content-Length": "7", "Content-Range": "bytes 0-6/90"})
    assert ranged.size == 90
    known = ExpectedFile("f", 3, sha)
    assert complete_from_headers(known, {"ETag": f'"{blob}"', "Content-Length": "9"}) == known


@pytest.mark.parametrize("path", ["../x", "/abs", "a/../../b", "a\\b", "", "a//b"])
def test_hostile_listing_paths_are_refused(path):
    with pytest.raises(CorruptRepoFileError):
        safe_repo_path(path)


def test_progress_reaches_an_observer_and_ends_with_the_total():
    seen: list[tuple[int, int]] = []
    with observe(lambda done, total, rate: seen.append((done, total))):
        progress = Progress(10, label="x")
    progress.add(4)
    progress.add(6)
    progress.close()
    assert seen[-1] == (10, 10)
