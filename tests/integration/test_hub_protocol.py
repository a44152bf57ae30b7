"""LocalHub speaks what huggingface_hub (1.x / 2.x), transformers and diffusers send: real clients, no mocks.

Every client call passes ``endpoint=hub.url`` (huggingface_hub reads ``HF_ENDPOINT`` once, at import) and
a fresh ``cache_dir``, so nothing is served from a previous test's cache.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import load_file, save_file

from hub_prefetch.testing import LocalHub
from hub_prefetch.testing.store import RepoStore

REPO = "org/model"
GATED = "org/gated"
TOKEN = "hf_local_secret"
MANY = "org/many"


def _weights(path: Path, seed: int, n: int = 250_000) -> Path:
    gen = torch.Generator().manual_seed(seed)
    save_file({"w": torch.randn(n, generator=gen), "b": torch.arange(7, dtype=torch.int64)}, str(path))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> RepoStore:
    root = tmp_path_factory.mktemp("store")
    src = tmp_path_factory.mktemp("src")
    store = RepoStore(root)
    w1 = _weights(src / "w1.safetensors", 1)
    first = store.commit(
        REPO,
        {
            "config.json": '{"v": 1}',
            "model.safetensors": w1,
            "sub/notes.txt": "notes",
            "sub/deep/x.json": "{}",
        },
        message="first",
    )
    store.create_tag(REPO, "v1", first)
    store.commit(REPO, {"config.json": '{"v": 2}'}, message="second")
    store.create_repo(GATED, gated=True, token=TOKEN)
    store.commit(GATED, {"config.json": "{}", "model.safetensors": w1})
    store.commit(MANY, {f"d{i % 3}/f{i}.txt": f"{i}" for i in range(10)} | {"top.txt": "t"})
    store.commit("org/data", {"data/train.csv": "a,b\n1,2\n"}, repo_type="dataset")
    return store


@pytest.fixture(scope="module")
def hub(store: RepoStore) -> Iterator[LocalHub]:
    with LocalHub(store, tree_page_size=3) as hub:
        yield hub


@pytest.fixture
def log(hub: LocalHub) -> Iterator[LocalHub]:
    hub.clear_faults()
    hub.reset_log()
    yield hub
    hub.clear_faults()


def _head(store: RepoStore, repo: str = REPO, rev: str = "main") -> str:
    commit = store.resolve(repo, rev)
    assert commit is not None
    return commit


def _raw(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, parts.path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_hf_hub_download_etags_and_log(
    hub: LocalHub, log: LocalHub, store: RepoStore, tmp_path: Path
) -> None:
    head = _head(store)
    files = store.files(REPO, head)
    for name in ("config.json", "model.safetensors"):
        path = hf_hub_download(REPO, name, endpoint=hub.url, cache_dir=tmp_path)
        assert Path(path).read_bytes() == files[name].blob_path.read_bytes()
        assert f"/snapshots/{head}/" in path
    # The blob is named by the ETag: the sha256 for an LFS file, the git blob id for a regular one.
    blobs = {p.name for p in tmp_path.glob("models--org--model/blobs/*")}
    assert blobs == {files["model.safetensors"].sha256, files["config.json"].git_sha1}
    assert log.counts() == {"revision": 0, "tree": 0, "head": 2, "get": 2, "other": 0}
    assert log.times_served("model.safetensors") == 1
    assert log.bytes_served("*.safetensors") == files["model.safetensors"].size
    records = [r for r in log.requests() if r.kind == "get"]
    assert all(r.complete and r.commit == head and r.repo_id == REPO for r in records)


def test_head_headers_match_the_hub(hub: LocalHub, store: RepoStore) -> None:
    head = _head(store)
    f = store.files(REPO, head)["model.safetensors"]
    status, headers, body = _raw(f"{hub.url}/{REPO}/resolve/main/model.safetensors", "HEAD")
    assert status == 200 and body == b""
    assert headers["X-Repo-Commit"] == head
    assert headers["ETag"] == f'"{f.sha256}"'
    assert headers["Content-Length"] == str(f.size)
    assert headers["Accept-Ranges"] == "bytes"
    assert not any(k.lower().startswith("x-xet") for k in headers)
    status, headers, _ = _raw(f"{hub.url}/{REPO}/resolve/main/config.json", "HEAD")
    assert headers["ETag"] == f'"{store.files(REPO, head)["config.json"].git_sha1}"'


def test_range_requests(hub: LocalHub, log: LocalHub, store: RepoStore) -> None:
    f = store.files(REPO, _head(store))["model.safetensors"]
    data = f.blob_path.read_bytes()
    url = f"{hub.url}/{REPO}/resolve/main/model.safetensors"
    status, headers, body = _raw(url, headers={"Range": "bytes=100-199"})
    assert (status, body, headers["Content-Range"]) == (206, data[100:200], f"bytes 100-199/{f.size}")
    status, headers, body = _raw(url, headers={"Range": "bytes=1000-"})
    assert (status, body) == (206, data[1000:])
    status, headers, body = _raw(url, headers={"Range": "bytes=-10"})
    assert (status, body) == (206, data[-10:])
    status, headers, _ = _raw(url, headers={"Range": f"bytes={f.size}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{f.size}"
    gets = [r for r in log.requests() if r.kind == "get" and r.status == 206]
    assert [(r.range_start, r.range_end, r.bytes_sent) for r in gets[:1]] == [(100, 199, 100)]
    # Ranges are not whole bodies.
    assert log.times_served("model.safetensors") == 0


def test_snapshot_download_costs_one_revision_call(
    hub: LocalHub, log: LocalHub, store: RepoStore, tmp_path: Path
) -> None:
    head = _head(store)
    folder = Path(snapshot_download(REPO, endpoint=hub.url, cache_dir=tmp_path))
    assert folder.name == head
    files = store.files(REPO, head)
    got = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert got == set(files)
    for name, f in files.items():
        assert (folder / name).read_bytes() == f.blob_path.read_bytes()
        assert log.times_served(name) == 1
    counts = log.counts()
    assert counts["revision"] == 1 and counts["get"] == len(files) and counts["other"] == 0
    # huggingface_hub 2.x lists the tree (one page here: 3 entries per page, but files only are counted);
    # 1.x reads the siblings of the revision answer.
    assert counts["tree"] in (0, 2)


def test_list_repo_tree_paginates(hub: LocalHub, log: LocalHub, store: RepoStore) -> None:
    api = HfApi(endpoint=hub.url)
    entries = list(api.list_repo_tree(MANY, recursive=True))
    files = set(store.files(MANY, _head(store, MANY)))
    assert {e.path for e in entries if e.__class__.__name__ == "RepoFile"} == files
    assert {e.path for e in entries if e.__class__.__name__ == "RepoFolder"} == {"d0", "d1", "d2"}
    # 14 entries, 3 per page -> 5 pages, each a request of kind "tree".
    assert log.counts()["tree"] == 5
    top = {e.path for e in api.list_repo_tree(MANY)}
    assert top == {"d0", "d1", "d2", "top.txt"}
    inside = {e.path for e in api.list_repo_tree(MANY, path_in_repo="d1", expand=True)}
    assert inside == {"d1/f1.txt", "d1/f4.txt", "d1/f7.txt"}
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(MANY, path_in_repo="nope"))


def test_model_info_with_files_metadata(hub: LocalHub, store: RepoStore) -> None:
    api = HfApi(endpoint=hub.url)
    head = _head(store)
    info = api.model_info(REPO, files_metadata=True)
    assert info.sha == head and info.id == REPO
    files = store.files(REPO, head)
    assert info.siblings is not None
    by_name = {s.rfilename: s for s in info.siblings}
    assert set(by_name) == set(files)
    st = by_name["model.safetensors"]
    assert st.size == files["model.safetensors"].size
    assert st.lfs is not None and st.lfs.sha256 == files["model.safetensors"].sha256
    assert by_name["config.json"].lfs is None
    assert by_name["config.json"].blob_id == files["config.json"].git_sha1
    assert api.model_info(REPO, revision="v1").sha == store.resolve(REPO, "v1")
    assert api.repo_info("org/data", repo_type="dataset").sha == store.resolve(
        "org/data", "main", repo_type="dataset"
    )


def test_refs_commits_paths_info(hub: LocalHub, store: RepoStore) -> None:
    api = HfApi(endpoint=hub.url)
    refs = api.list_repo_refs(REPO)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": _head(store)}
    assert {t.name: t.target_commit for t in refs.tags} == {"v1": store.resolve(REPO, "v1")}
    commits = api.list_repo_commits(REPO)
    assert [c.commit_id for c in commits] == store.history(REPO, _head(store))
    assert [c.title for c in commits] == ["second", "first"]
    infos = api.get_paths_info(REPO, ["config.json", "sub", "missing.txt"])
    assert {i.path for i in infos} == {"config.json", "sub"}
    # What transformers' safetensors auto-conversion asks: no open PR.
    assert list(api.get_repo_discussions(REPO)) == []
    assert set(api.list_repo_files(REPO)) == set(store.files(REPO, _head(store)))
    assert api.file_exists(REPO, "sub/notes.txt") and not api.file_exists(REPO, "nope.txt")
    assert api.revision_exists(REPO, "v1") and not api.revision_exists(REPO, "v2")


def test_gated_repo_needs_the_token(hub: LocalHub, tmp_path: Path) -> None:
    with pytest.raises(GatedRepoError):
        hf_hub_download(GATED, "config.json", endpoint=hub.url, cache_dir=tmp_path / "a")
    with pytest.raises(GatedRepoError):
        hf_hub_download(GATED, "config.json", endpoint=hub.url, cache_dir=tmp_path / "b", token="hf_wrong")
    path = hf_hub_download(
        GATED, "model.safetensors", endpoint=hub.url, cache_dir=tmp_path / "c", token=TOKEN
    )
    assert set(load_file(path)) == {"w", "b"}


def test_missing_repo_revision_file_raise_typed_errors(hub: LocalHub, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError) as err:
        hf_hub_download("org/absent", "config.json", endpoint=hub.url, cache_dir=tmp_path)
    assert not isinstance(err.value, GatedRepoError)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url).model_info("org/absent")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="nope", endpoint=hub.url, cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="f" * 40, endpoint=hub.url, cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        HfApi(endpoint=hub.url).model_info(REPO, revision="nope")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "absent.bin", endpoint=hub.url, cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("org/absent", endpoint=hub.url, cache_dir=tmp_path)


def test_branch_moves_then_resolves_again(hub: LocalHub, store: RepoStore, tmp_path: Path) -> None:
    repo = "org/moving"
    c1 = store.commit(repo, {"config.json": '{"step": 1}'})
    first = hf_hub_download(repo, "config.json", endpoint=hub.url, cache_dir=tmp_path)
    c2 = store.commit(repo, {"config.json": '{"step": 2}'})
    second = hf_hub_download(repo, "config.json", endpoint=hub.url, cache_dir=tmp_path)
    assert json.loads(Path(first).read_text()) == {"step": 1} and c1 in first
    assert json.loads(Path(second).read_text()) == {"step": 2} and c2 in second
    assert (tmp_path / "models--org--moving" / "refs" / "main").read_text() == c2
    store.set_branch(repo, "main", c1)  # moved back, as a force-push would
    third = hf_hub_download(repo, "config.json", endpoint=hub.url, cache_dir=tmp_path)
    assert third == first
    assert HfApi(endpoint=hub.url).model_info(repo).sha == c1


def test_tag_and_full_sha_lookups(hub: LocalHub, store: RepoStore, tmp_path: Path) -> None:
    v1 = store.resolve(REPO, "v1")
    assert v1 is not None and v1 != _head(store)
    by_tag = hf_hub_download(REPO, "config.json", revision="v1", endpoint=hub.url, cache_dir=tmp_path)
    by_sha = hf_hub_download(REPO, "config.json", revision=v1, endpoint=hub.url, cache_dir=tmp_path / "x")
    assert json.loads(Path(by_tag).read_text()) == json.loads(Path(by_sha).read_text()) == {"v": 1}
    assert (tmp_path / "models--org--model" / "refs" / "v1").read_text() == v1
    folder = snapshot_download(REPO, revision="v1", endpoint=hub.url, cache_dir=tmp_path / "s")
    assert Path(folder).name == v1


def test_dataset_repo(hub: LocalHub, tmp_path: Path) -> None:
    path = hf_hub_download(
        "org/data", "data/train.csv", repo_type="dataset", endpoint=hub.url, cache_dir=tmp_path
    )
    assert Path(path).read_text() == "a,b\n1,2\n"
    folder = snapshot_download("org/data", repo_type="dataset", endpoint=hub.url, cache_dir=tmp_path / "s")
    assert (Path(folder) / "data" / "train.csv").is_file()


def test_redirect_lfs_serves_blobs_from_a_second_origin(store: RepoStore, tmp_path: Path) -> None:
    with LocalHub(store, redirect_lfs=True) as hub:
        assert hub.cdn_url is not None and hub.cdn_url != hub.url
        head = _head(store, GATED)
        path = hf_hub_download(GATED, "model.safetensors", endpoint=hub.url, cache_dir=tmp_path, token=TOKEN)
        f = store.files(GATED, head)["model.safetensors"]
        assert Path(path).read_bytes() == f.blob_path.read_bytes()
        assert Path(path).resolve().name == f.sha256
        cfg = hf_hub_download(GATED, "config.json", endpoint=hub.url, cache_dir=tmp_path, token=TOKEN)
        assert Path(cfg).read_text() == "{}"
        records = hub.requests()
        heads = [r for r in records if r.kind == "head" and r.filename == "model.safetensors"]
        assert [r.status for r in heads] == [302]
        gets = [r for r in records if r.kind == "get" and r.filename == "model.safetensors"]
        assert [(r.status, r.path.startswith("/_cdn/")) for r in gets] == [(200, True)]
        # Regular files are not redirected.
        assert [r.status for r in records if r.filename == "config.json"] == [200, 200]
        assert hub.times_served("model.safetensors") == 1
        status, headers, _ = _raw(
            f"{hub.url}/{GATED}/resolve/main/model.safetensors", "HEAD", {"Authorization": f"Bearer {TOKEN}"}
        )
        assert (
            status == 302
            and headers["X-Linked-Etag"] == f'"{f.sha256}"'
            and headers["X-Linked-Size"] == str(f.size)
        )
        assert headers["Location"].startswith(hub.cdn_url + "/")


def test_spawned_hub_same_api_over_http(store: RepoStore, tmp_path: Path) -> None:
    hub = LocalHub.spawn(store.root, tree_page_size=2)
    try:
        fault = hub.fail(f"/{REPO}/resolve/*/config.json", method="GET", status=500)
        with pytest.raises(HfHubHTTPError) as err:
            hf_hub_download(REPO, "config.json", endpoint=hub.url, cache_dir=tmp_path)
        assert err.value.response is not None and err.value.response.status_code == 500
        path = hf_hub_download(REPO, "config.json", endpoint=hub.url, cache_dir=tmp_path)
        assert json.loads(Path(path).read_text()) == {"v": 2}
        statuses = [r.status for r in hub.requests() if r.kind == "get"]
        assert statuses == [500, 200]
        assert hub.times_served("config.json") == 1
        hub.clear_fault(fault)
        # The store is read live: a commit made here is served by the other process at once.
        c = store.commit("org/spawned", {"a.txt": "a"})
        assert HfApi(endpoint=hub.url).model_info("org/spawned").sha == c
        assert len(list(HfApi(endpoint=hub.url).list_repo_tree(MANY, recursive=True))) == 14
    finally:
        port = hub.port
        proc = hub._proc
        hub.stop()
    assert proc is not None and proc.returncode is not None
    _assert_port_free(port)


def _assert_port_free(port: int) -> None:
    """Nothing listens any more, and a new server may bind the port (connections of the old one may linger
    in TIME_WAIT, which SO_REUSEADDR allows, as every server sets it)."""
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


def test_stop_is_clean_and_idempotent(store: RepoStore) -> None:
    before = threading.active_count()
    hub = LocalHub(store).start()
    port = hub.port
    hold = hub.hold("*/resolve/*/config.json")
    result: list[Any] = []

    def fetch() -> None:
        try:
            result.append(_raw(f"{hub.url}/{REPO}/resolve/main/config.json")[0])
        except Exception as err:
            result.append(err)

    t = threading.Thread(target=fetch)
    t.start()
    hold.wait_arrived(1, timeout=10)
    t0 = time.monotonic()
    hub.stop()
    hub.stop()
    t.join(10)
    assert not t.is_alive() and result  # the parked request was let go (with a 503 or a cut connection)
    assert time.monotonic() - t0 < 10
    _assert_port_free(port)
    assert threading.active_count() <= before


def test_64_concurrent_downloads(hub: LocalHub, log: LocalHub, store: RepoStore) -> None:
    """64 GETs parked at once, then released together: all complete, each body whole."""
    f = store.files(REPO, _head(store))["model.safetensors"]
    want = hashlib.sha256(f.blob_path.read_bytes()).hexdigest()
    hold = log.hold("*/resolve/main/model.safetensors", count=64)
    digests: list[str] = []
    lock = threading.Lock()

    def fetch() -> None:
        status, _, body = _raw(f"{hub.url}/{REPO}/resolve/main/model.safetensors")
        with lock:
            digests.append(f"{status}:{hashlib.sha256(body).hexdigest()}")

    threads = [threading.Thread(target=fetch) for _ in range(64)]
    for t in threads:
        t.start()
    hold.wait_arrived(64, timeout=60)
    t0 = time.monotonic()
    hold.release()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - t0
    assert digests == [f"200:{want}"] * 64
    assert log.times_served("model.safetensors") == 64
    print(f"64 x {f.size} bytes in {elapsed:.2f} s ({64 * f.size / elapsed / 1e6:.0f} MB/s)")


def test_transformers_and_diffusers_loads(
    local_hub: LocalHub, built_repos: dict[str, Any], hf_cache: Path
) -> None:
    """Real from_pretrained calls against the session hub: every request they make is answered as the Hub
    would (no 5xx, no unknown route)."""
    from diffusers import DiffusionPipeline
    from transformers import AutoModel, AutoTokenizer

    sharded = built_repos["sharded"]
    model = AutoModel.from_pretrained(sharded.repo_id, subfolder=sharded.subfolder, cache_dir=hf_cache)
    assert model is not None
    tok = built_repos["tokenizer"]
    tokenizer = AutoTokenizer.from_pretrained(tok.repo_id, subfolder=tok.subfolder, cache_dir=hf_cache)
    assert tokenizer("hub") is not None
    pipe = DiffusionPipeline.from_pretrained("tiny/sd-pipe", cache_dir=hf_cache)
    assert pipe is not None
    records = local_hub.requests()
    bad = [(r.method, r.path, r.status) for r in records if r.status is None or r.status >= 500]
    assert not bad
    unknown = [
        (r.method, r.path) for r in records if r.kind == "other" and r.status == 404 and r.repo_id is None
    ]
    assert not unknown


def test_branch_with_slash_and_single_segment_repo_id(
    hub: LocalHub, store: RepoStore, tmp_path: Path
) -> None:
    base = store.commit("solo", {"config.json": '{"solo": 1}', "sub/a.txt": "a", "sub/b.txt": "b"})
    rel = store.commit("solo", {"config.json": '{"solo": 2}'}, branch="release/v2", parent=base)
    path = hf_hub_download("solo", "config.json", revision="release/v2", endpoint=hub.url, cache_dir=tmp_path)
    assert json.loads(Path(path).read_text()) == {"solo": 2} and rel in path
    api = HfApi(endpoint=hub.url)
    assert api.model_info("solo", revision="release/v2").sha == rel
    assert api.model_info("solo").sha == base
    # Paginated (3 per page) under a revision that must stay encoded in the next-page links.
    tree = {e.path for e in api.list_repo_tree("solo", revision="release/v2", recursive=True)}
    assert tree == {"config.json", "sub", "sub/a.txt", "sub/b.txt"}
    folder = snapshot_download("solo", revision="release/v2", endpoint=hub.url, cache_dir=tmp_path / "s")
    assert Path(folder).name == rel and (Path(folder) / "sub" / "b.txt").read_text() == "b"
