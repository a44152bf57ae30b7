"""Bad input: a clear typed error at once, zero retries, nothing written outside the cache.

Open-ended inputs (repo ids, revisions, subfolders, index contents) come from hypothesis; every example
runs against the local Hub with its own cache folder. Fixed cases already in test_prefetch.py (a few
path-like ids, unknown subfolder, 404 repo / revision, gated without token) are not repeated.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from _faultkit import tree_state
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import hub_prefetch
from hub_prefetch import errors

SHARDED = "tiny/sharded-bert"
SUB = "text_encoder"
HYPO = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run and both stacks: a failure reproduces
)
# Characters that make ids and paths interesting: separators, dots, escapes, URL syntax, controls.
HOSTILE = st.lists(
    st.sampled_from([*"ab-_./\\~:%?#@ \x00\n", "..", "//", "%2e%2e", "%2F", "é", "\u202e", "tiny", "main"]),
    max_size=12,
).map("".join)


class Probe:
    """One call in a fresh cache: what it raised, what the Hub was asked, what was written where."""

    def __init__(self, hub, base: Path) -> None:
        self.hub = hub
        self.root = Path(tempfile.mkdtemp(dir=base))
        self.cache = self.root / "cache"
        self.home_before = tree_state(Path(os.environ["HF_HOME"]))

    def __call__(self, fn, *args, **kwargs) -> BaseException | None:
        self.hub.reset_log()
        try:
            fn(*args, cache_dir=self.cache, **kwargs)
        except Exception as exc:
            return exc
        return None

    def assert_no_retry(self) -> None:
        seen = [(r.method, r.path) for r in self.hub.requests()]
        assert len(seen) == len(set(seen)), seen  # nothing asked twice
        assert self.hub.counts()["revision"] <= 1

    def assert_contained(self) -> None:
        """Nothing outside the cache folder, nothing below it that resolves outside it."""
        assert sorted(os.listdir(self.root)) in ([], ["cache"]), os.listdir(self.root)
        assert tree_state(Path(os.environ["HF_HOME"])) == self.home_before
        real = os.path.realpath(self.cache)
        for dirpath, dirnames, filenames in os.walk(self.cache):
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                target = os.path.realpath(full)
                assert target == real or target.startswith(real + os.sep), (full, target)

    def assert_untouched(self) -> None:
        assert self.hub.requests() == []
        assert not self.cache.exists() or not any(self.cache.iterdir()), list(self.cache.rglob("*"))


@pytest.fixture
def probe(local_hub, hf_cache, tmp_path):
    return lambda: Probe(local_hub, tmp_path)


# -- repo ids, revisions, subfolders ---------------------------------------------------------------


@HYPO
@given(repo_id=HOSTILE)
@example(repo_id="../../etc")
@example(repo_id="/abs/path")
@example(repo_id="tiny/../sharded-bert")
@example(repo_id="tiny/sharded-bert/")
@example(repo_id="tiny//sharded-bert")
@example(repo_id="tiny\\sharded-bert")
@example(repo_id="models--tiny--sharded-bert")
@example(repo_id="tiny/sharded-bert\x00")
@example(repo_id="")
def test_any_repo_id_is_refused_at_once_or_not_found_once(probe, repo_id):
    p = probe()
    exc = p(hub_prefetch.prefetch, repo_id, [SUB])
    assert isinstance(exc, (errors.InvalidRequestError, errors.RepoNotFound)), repr(exc)
    if isinstance(exc, errors.InvalidRequestError):
        p.assert_untouched()
    p.assert_no_retry()
    p.assert_contained()
    # the best-effort API refuses invalid input the same way and swallows the rest
    again = p(hub_prefetch.prefetch_subfolders, repo_id, [SUB])
    assert again is None or type(again) is type(exc), (repr(again), repr(exc))
    p.assert_contained()


@HYPO
@given(revision=HOSTILE)
@example(revision="../../main")
@example(revision="main/../../x")
@example(revision="/main")
@example(revision="refs/../../etc")
@example(revision="a" * 40)  # a well-formed commit hash that does not exist
@example(revision="%2e%2e")
def test_any_revision_is_refused_at_once_or_not_found_once(probe, revision):
    p = probe()
    exc = p(hub_prefetch.prefetch, SHARDED, [SUB], revision=revision)
    if revision == "":
        assert exc is None  # empty means the default branch, as in huggingface_hub
    else:
        assert isinstance(exc, (errors.InvalidRequestError, errors.RevisionNotFound)), repr(exc)
        if isinstance(exc, errors.InvalidRequestError):
            p.assert_untouched()
    p.assert_no_retry()
    p.assert_contained()


@HYPO
@given(subfolder=HOSTILE)
@example(subfolder="../..")
@example(subfolder="text_encoder/../../../etc")
@example(subfolder="/etc")
@example(subfolder="text_encoder\\..")
@example(subfolder="no_such_part")
@example(subfolder="text_encoder/config.json")  # a file, not a folder
def test_any_subfolder_is_refused_at_once_or_unknown_after_one_listing(probe, subfolder):
    p = probe()
    exc = p(hub_prefetch.prefetch, SHARDED, [subfolder])
    normalized = "/".join(x for x in subfolder.split("/") if x not in ("", "."))
    if exc is None:
        assert normalized in ("", "text_encoder", "tokenizer"), subfolder  # a real folder, or the root
    else:
        assert isinstance(exc, (errors.InvalidRequestError, errors.UnknownSubfolderError)), repr(exc)
        if not isinstance(exc, errors.UnknownSubfolderError):
            p.assert_untouched()
        else:
            assert p.hub.counts() == {"revision": 1, "tree": 0, "head": 0, "get": 0, "other": 0}
    p.assert_no_retry()
    p.assert_contained()


def test_wrong_token_on_a_gated_repo_is_refused_at_once(probe):
    p = probe()
    exc = p(hub_prefetch.prefetch, "tiny/gated", [""], token="hf_not_the_token")
    assert isinstance(exc, errors.GatedRepoError), repr(exc)
    # The engine asks no HEAD: its first GET is refused, and not one byte of the gated files is served.
    assert p.hub.bytes_served() == 0
    assert all(r.status == 401 for r in p.hub.requests() if r.kind in ("get", "head"))
    p.assert_no_retry()
    p.assert_contained()


@pytest.mark.parametrize("status", [404, 403, 400])
def test_a_refused_file_is_a_typed_error_without_retries(probe, local_hub, status):
    shard = f"{SUB}/model-00002-of-00003.safetensors"
    local_hub.fail(f"*/resolve/*/{shard}", status=status, count=-1)
    p = probe()
    exc = p(hub_prefetch.prefetch, SHARDED, [SUB])
    assert isinstance(exc, errors.HubAccessError), repr(exc)
    assert shard in str(exc)
    asked = [r for r in local_hub.requests() if r.filename == shard]
    assert len(asked) == 1, [(r.method, r.status) for r in asked]  # asked once, never again
    p.assert_no_retry()
    p.assert_contained()


# -- the repo's own files are broken ----------------------------------------------------------------

_counter = iter(range(10**9))


def _bad_repo(hub_store, built_repos, files: dict[str, bytes]) -> str:
    """A copy of tiny/sharded-bert's text_encoder with ``files`` replaced; a fresh repo id each time."""
    src = built_repos["sharded"]
    repo = f"bad/repo-{next(_counter)}"
    base = {p: hub_store.read(SHARDED, src.commit, p) for p in src.files if p.startswith(SUB + "/")}
    hub_store.commit(repo, {**base, **files}, message="broken on purpose")
    return repo


INDEX = f"{SUB}/model.safetensors.index.json"


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"",
        b"[]",
        b"{}",
        b'{"weight_map": []}',
        b'{"weight_map": {}}',  # names no shard: a load would silently initialise every weight at random
        b'{"weight_map": {"a": 7}}',
        b'{"weight_map": {"a": "../../../../etc/passwd"}}',
        b'{"weight_map": {"a": "/etc/passwd"}}',
        b'{"weight_map": {"a": "sub/model-00001-of-00003.safetensors"}}',
        b'{"weight_map": {"a": "model-00009-of-00009.safetensors"}}',
        b'{"weight_map": {"a": ".."}}',
    ],
    ids=lambda c: c.decode()[:40] or "empty",
)
def test_a_corrupt_index_in_the_repo_is_a_typed_error_before_any_shard(
    probe, local_hub, hub_store, built_repos, content
):
    repo = _bad_repo(hub_store, built_repos, {INDEX: content})
    p = probe()
    exc = p(hub_prefetch.prefetch, repo, [SUB])
    assert isinstance(exc, errors.CorruptRepoFileError), repr(exc)
    assert INDEX in str(exc)
    shards = [
        r for r in local_hub.requests() if r.kind == "get" and (r.filename or "").endswith(".safetensors")
    ]
    assert shards == []
    p.assert_no_retry()
    p.assert_contained()


@HYPO
@given(
    weight_map=st.dictionaries(
        st.text(max_size=5),
        st.one_of(
            HOSTILE,
            st.sampled_from([f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]),
            st.integers(),
            st.none(),
        ),
        max_size=4,
    )
)
def test_any_index_content_is_followed_only_inside_the_repo(
    probe, local_hub, hub_store, built_repos, weight_map
):
    repo = _bad_repo(hub_store, built_repos, {INDEX: json.dumps({"weight_map": weight_map}).encode()})
    p = probe()
    exc = p(hub_prefetch.prefetch, repo, [SUB])
    valid = {f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)}
    if weight_map and set(weight_map.values()) <= valid:
        assert exc is None, repr(exc)
    else:
        assert isinstance(exc, errors.CorruptRepoFileError), repr(exc)
    asked = {r.filename for r in local_hub.requests() if r.kind == "get"}
    assert asked <= {f"{SUB}/{v}" for v in valid} | {INDEX, f"{SUB}/config.json"}, asked
    p.assert_no_retry()
    p.assert_contained()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{not json", errors.CorruptRepoFileError),
        (b"[]", errors.CorruptRepoFileError),
        (b'"a string"', errors.CorruptRepoFileError),
        (
            b'{"_class_name": "X", "../../etc": ["diffusers", "UNet2DConditionModel"]}',
            errors.HubPrefetchError,
        ),
        (b'{"_class_name": "X", "/abs": ["diffusers", "UNet2DConditionModel"]}', errors.HubPrefetchError),
        (
            b'{"_class_name": "X", "ghost": ["diffusers", "UNet2DConditionModel"]}',
            errors.UnknownSubfolderError,
        ),
    ],
    ids=["not-json", "list", "string", "traversal", "absolute", "absent-component"],
)
def test_a_corrupt_model_index_is_a_typed_error_at_once(probe, local_hub, hub_store, content, expected):
    repo = f"bad/pipe-{next(_counter)}"
    hub_store.commit(repo, {"model_index.json": content, "unet/config.json": b"{}"}, message="broken")
    p = probe()
    exc = p(hub_prefetch.prefetch_pipeline, repo)
    assert isinstance(exc, expected), repr(exc)
    assert not isinstance(exc, (errors.HubUnavailableError, errors.IncompleteSnapshotError)), repr(exc)
    p.assert_no_retry()
    p.assert_contained()
