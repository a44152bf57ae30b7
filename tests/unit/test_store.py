"""RepoStore: commit history, refs, content addressing, LFS classification, persistence across instances."""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path

import pytest

from hub_prefetch.testing.store import LFS_THRESHOLD, RepoStore, lfs_pointer

SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_commits_chain_and_branch_moves(tmp_path: Path) -> None:
    store = RepoStore(tmp_path)
    c1 = store.commit("org/m", {"config.json": "{}", "a/b.txt": b"hello"}, message="first")
    c2 = store.commit("org/m", {"a/b.txt": b"hello again"}, delete=["config.json"], message="second")
    assert SHA_RE.fullmatch(c1) and SHA_RE.fullmatch(c2) and c1 != c2
    assert store.resolve("org/m", "main") == c2
    assert set(store.files("org/m", c1)) == {"config.json", "a/b.txt"}
    assert set(store.files("org/m", c2)) == {"a/b.txt"}
    # Old commits stay readable after the branch moved on.
    assert store.read("org/m", c1, "a/b.txt") == b"hello"
    assert store.read("org/m", c2, "a/b.txt") == b"hello again"
    assert store.history("org/m", c2) == [c2, c1]
    assert store.commit_info("org/m", c2)["parent"] == c1

    store.set_branch("org/m", "main", c1)
    assert store.resolve("org/m", "main") == c1
    store.create_tag("org/m", "v1", c2)
    assert store.resolve("org/m", "v1") == c2
    assert store.resolve("org/m", "refs/tags/v1") == c2
    assert store.resolve("org/m", "refs/heads/main") == c1
    assert store.resolve("org/m", c2) == c2
    assert store.resolve("org/m", "0" * 40) is None
    assert store.resolve("org/m", "nope") is None
    assert store.resolve("org/other", "main") is None
    assert store.refs("org/m") == {"branches": {"main": c1}, "tags": {"v1": c2}}


def test_new_branch_starts_empty_or_from_parent(tmp_path: Path) -> None:
    store = RepoStore(tmp_path)
    c1 = store.commit("m", {"x.txt": "x"})
    dev = store.commit("m", {"y.txt": "y"}, branch="dev")
    assert set(store.files("m", dev)) == {"y.txt"}
    feature = store.commit("m", {"z.txt": "z"}, branch="feature", parent=c1)
    assert set(store.files("m", feature)) == {"x.txt", "z.txt"}
    assert store.resolve("m", "main") == c1


def test_delete_folder_and_errors(tmp_path: Path) -> None:
    store = RepoStore(tmp_path)
    store.commit("m", {"sub/a.txt": "a", "sub/b.txt": "b", "c.txt": "c"})
    c2 = store.commit("m", delete=["sub"])
    assert set(store.files("m", c2)) == {"c.txt"}
    with pytest.raises(KeyError):
        store.commit("m", delete=["missing.txt"])
    with pytest.raises(ValueError, match="invalid path"):
        store.commit("m", {"../escape": "x"})
    with pytest.raises(ValueError, match="both as a file and as a folder"):
        store.commit("m", {"c.txt/inner": "x"})
    with pytest.raises(ValueError, match="invalid repo id"):
        store.commit("a/b/c", {"x": "x"})
    with pytest.raises(KeyError):
        store.set_branch("m", "main", "f" * 40)
    with pytest.raises(FileExistsError):
        store.create_repo("m", exist_ok=False)


def test_content_addressing_and_lfs_metadata(tmp_path: Path) -> None:
    store = RepoStore(tmp_path)
    weights = bytes(range(256)) * 10
    big_text = b"x" * LFS_THRESHOLD
    c = store.commit(
        "m", {"model.safetensors": weights, "copy.bin": weights, "config.json": "{}", "big.txt": big_text}
    )
    files = store.files("m", c)
    st, copy, cfg, big = files["model.safetensors"], files["copy.bin"], files["config.json"], files["big.txt"]
    assert st.is_lfs and copy.is_lfs and big.is_lfs and not cfg.is_lfs
    assert st.sha256 == hashlib.sha256(weights).hexdigest() == st.etag
    assert st.blob_path == copy.blob_path  # stored once
    assert len(list((tmp_path / "blobs").iterdir())) == 3
    # The Hub's blob id of an LFS file is the git sha1 of its pointer file; of a regular file, of the content.
    assert st.git_sha1 == git_blob_sha1(lfs_pointer(st.sha256, st.size))
    assert st.pointer_size == len(lfs_pointer(st.sha256, st.size))
    assert cfg.git_sha1 == git_blob_sha1(b"{}") == cfg.etag
    assert (st.size, cfg.size) == (len(weights), 2)


def test_same_change_same_commit_and_persistence(tmp_path: Path) -> None:
    store = RepoStore(tmp_path)
    base = store.commit("m", {"a": "1"})
    c1 = store.commit("m", {"b": "2"}, branch="x", parent=base, message="m")
    c2 = store.commit("m", {"b": "2"}, branch="y", parent=base, message="m")
    assert c1 == c2
    other = RepoStore(tmp_path)  # another process would see the same
    assert other.resolve("m", "x") == c1
    assert other.repos() == [("model", "m")]
    store.commit("m", {"c": "3"})
    assert other.resolve("m", "main") == store.resolve("m", "main")


def test_upload_folder_and_repo_types(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.safetensors").write_bytes(b"\0" * 10)
    (src / "config.json").write_text("{}")
    (src / ".hidden").write_text("no")
    store = RepoStore(tmp_path / "store")
    c = store.upload_folder("org/ds", src, path_in_repo="data", repo_type="dataset")
    assert set(store.files("org/ds", c, repo_type="dataset")) == {
        "data/config.json",
        "data/sub/w.safetensors",
    }
    assert store.resolve("org/ds", "main") is None  # a model of that name does not exist
    store.create_repo("org/gated", gated=True, token="tok")
    settings = store.repo_settings("org/gated")
    assert settings is not None and settings["gated"] and settings["token"] == "tok"
    assert store.repos() == [("dataset", "org/ds"), ("model", "org/gated")]


def test_concurrent_commits_on_distinct_branches(tmp_path: Path) -> None:
    store = RepoStore(tmp_path)
    store.commit("m", {"base": "0"})
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            s = RepoStore(tmp_path)
            for j in range(5):
                s.commit("m", {f"f{i}-{j}": str(j)}, branch=f"b{i}")
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    refs = store.refs("m")["branches"]
    assert set(refs) == {"main", "b0", "b1", "b2", "b3"}
    for i in range(4):
        assert len(store.files("m", refs[f"b{i}"])) == 5
