"""The peer fan-out's pure parts: the manifest, the test fault knob, where a growing download is found."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hub_prefetch.distributed.manifest import Manifest
from hub_prefetch.distributed.source import _growing
from hub_prefetch.distributed.transfer import _parse_fault
from hub_prefetch.engine.parts import PartsRecord, contiguous_prefix, plan_parts
from hub_prefetch.verify import ExpectedFile

SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()


def _listing() -> dict[str, ExpectedFile]:
    return {
        "m/config.json": ExpectedFile("m/config.json", 10, None, "1" * 40),
        "m/a.safetensors": ExpectedFile("m/a.safetensors", 100, SHA_A, "2" * 40),
        "m/copy-of-a.safetensors": ExpectedFile("m/copy-of-a.safetensors", 100, SHA_A, "2" * 40),
        "m/b.safetensors": ExpectedFile("m/b.safetensors", 200, SHA_B, "3" * 40),
        "m/mirror.txt": ExpectedFile("m/mirror.txt", None, None, None),  # a mirror that lists no digest
        "other/unused.bin": ExpectedFile("other/unused.bin", 5, None, "4" * 40),
        "m/odd.json": ExpectedFile("m/odd.json", 5, None, "../../../etc/x"),  # never a blob name
    }


def test_manifest_groups_paths_by_blob_and_leaves_undigested_files_to_the_hub() -> None:
    order = ["m/config.json", "m/a.safetensors", "m/copy-of-a.safetensors", "m/b.safetensors", "m/mirror.txt"]
    manifest = Manifest.build("c" * 40, _listing(), [*order, "m/odd.json"])
    assert [(i.etag, i.paths) for i in manifest.items] == [
        ("1" * 40, ("m/config.json",)),
        (SHA_A, ("m/a.safetensors", "m/copy-of-a.safetensors")),
        (SHA_B, ("m/b.safetensors",)),
    ]
    assert manifest.hub_only == ("m/mirror.txt", "m/odd.json")
    assert manifest.selected == tuple(sorted([*order, "m/odd.json"]))
    assert manifest.bytes_total == 10 + 100 + 100 + 200 + 5
    assert [i.size for i in manifest.items] == [10, 100, 200]


def test_manifest_round_trips_through_bytes_in_the_same_order() -> None:
    order = ["m/b.safetensors", "m/config.json", "m/a.safetensors", "m/copy-of-a.safetensors"]
    manifest = Manifest.build("c" * 40, _listing(), order)
    again = Manifest.from_bytes(manifest.to_bytes())
    assert again == manifest
    assert [i.etag for i in again.items] == [SHA_B, "1" * 40, SHA_A]


def test_fault_knob_names_one_rank_and_a_glob() -> None:
    assert _parse_fault("corrupt:0:*/model-0002*", 0) == "*/model-0002*"
    assert _parse_fault("corrupt:0:*/model-0002*", 1) is None
    assert _parse_fault("", 0) is None
    assert _parse_fault("flip:0:x", 0) is None
    assert _parse_fault("corrupt:zero:x", 0) is None


def test_a_growing_download_is_its_largest_temp_file(tmp_path: Path) -> None:
    blobs, partial = tmp_path / "blobs", tmp_path / "partial"
    blobs.mkdir()
    partial.mkdir()
    (blobs / f"{SHA_A}.incomplete").write_bytes(b"x" * 10)  # huggingface_hub < 1.18
    (blobs / f"{SHA_A}.1a2b3c4d.incomplete").write_bytes(b"x" * 30)  # one writer's own temp file
    (blobs / SHA_A).write_bytes(b"x" * 99)  # a published blob is no temp file
    (blobs / f"{SHA_B}.incomplete").write_bytes(b"x" * 50)
    assert _growing((blobs, partial), SHA_A, 0, 100) == (blobs / f"{SHA_A}.1a2b3c4d.incomplete", 30)
    assert _growing((blobs, partial), SHA_A, 30, 100) is None  # nothing beyond what was already sent
    (partial / SHA_A).write_bytes(b"x" * 40)  # the engine's partial file, one stream: its length
    assert _growing((blobs, partial), SHA_A, 30, 100) == (partial / SHA_A, 40)
    assert _growing((blobs, partial), "f" * 64, 0, 100) is None


def test_a_split_download_is_followed_up_to_its_contiguous_front(tmp_path: Path) -> None:
    """A split download writes ranges ahead of its front (its file has the full size at once): only the
    bytes up to the first unfinished range, as its ``.parts`` record says, may be relayed."""
    partial = tmp_path / "partial"
    partial.mkdir()
    size = 100
    (partial / SHA_A).write_bytes(b"\0" * size)
    parts = plan_parts(size, part_size=25, connections=4)
    assert [(p.start, p.end) for p in parts] == [(0, 25), (25, 50), (50, 75), (75, 100)]
    record = PartsRecord(partial / SHA_A, size, parts)
    try:
        assert _growing((partial,), SHA_A, 0, size) is None  # nothing written yet
        parts[1].done = 25  # the second range first: still no front
        record.update(parts[1])
        assert _growing((partial,), SHA_A, 0, size) is None
        parts[0].done = 10
        record.update(parts[0])
        assert _growing((partial,), SHA_A, 0, size) == (partial / SHA_A, 10)
        parts[0].done = 25  # the first range done: the front runs on through the second
        record.update(parts[0])
        assert _growing((partial,), SHA_A, 0, size) == (partial / SHA_A, 50)
        assert _growing((partial,), SHA_A, 50, size) is None
        parts[3].done = 25
        record.update(parts[3])
        assert contiguous_prefix(parts) == 50
        parts[2].done = 25
        assert contiguous_prefix(parts) == 100
    finally:
        record.close()
    (partial / f"{SHA_A}.parts").write_bytes(b"garbage")  # a record that cannot be read: nothing
    assert _growing((partial,), SHA_A, 0, size) is None


def test_chunks_stay_small_until_the_link_is_measured_then_follow_its_rate() -> None:
    """A chunk is what every hop adds, so it stays at 64 KiB on a slow link; on a fast one it grows (at
    most doubling per chunk, up to 1 MiB) to about 5 ms of the rate measured over more than a send
    buffer's worth of backlogged sends."""
    from hub_prefetch.distributed.localcopy import LocalCopy
    from hub_prefetch.distributed.sender import MAX_CHUNK, MIN_CHUNK, Sender

    class Wire:
        timeout = 1.0

    fast = Sender(Wire(), LocalCopy(), [], 0)  # type: ignore[arg-type]
    for _ in range(255):  # 16 MiB - 64 KiB at 1 GB/s: not trusted yet (a send buffer hides the link)
        fast.timed(MIN_CHUNK, MIN_CHUNK / 1e9)
    assert fast.chunk == MIN_CHUNK
    sizes = []
    for _ in range(8):
        fast.timed(fast.chunk, fast.chunk / 1e9)
        sizes.append(fast.chunk)
    assert sizes[:4] == [2 * MIN_CHUNK, 4 * MIN_CHUNK, 8 * MIN_CHUNK, 16 * MIN_CHUNK]
    assert sizes[-1] == MAX_CHUNK  # 5 ms of 1 GB/s is more than the largest chunk

    slow = Sender(Wire(), LocalCopy(), [], 0)  # type: ignore[arg-type]
    for _ in range(400):  # 25 MiB at 10 MB/s: 5 ms of it is less than the smallest chunk
        slow.timed(MIN_CHUNK, MIN_CHUNK / 1e7)
    assert slow.chunk == MIN_CHUNK
