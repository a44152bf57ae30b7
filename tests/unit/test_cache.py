from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub_prefetch import cache
from hub_prefetch.errors import InvalidRequestError


@pytest.mark.parametrize("repo_id", ["gpt2", "org/name", "Org-1/na.me_2", "a" * 96])
def test_valid_repo_ids(repo_id):
    assert cache.validate_repo_id(repo_id) == repo_id


@pytest.mark.parametrize(
    "repo_id",
    [
        "",
        "../x",
        "/abs/path",
        "a/b/c",
        "a\\b",
        "a--b",
        "a..b",
        ".hidden",
        "x.git",
        "a" * 97,
        "org/",
        " ",
        "a b",
    ],
)
def test_path_like_and_malformed_repo_ids_are_refused(repo_id):
    with pytest.raises(InvalidRequestError):
        cache.validate_repo_id(repo_id)


@pytest.mark.parametrize(
    "sub,expected", [("", ""), ("text_encoder", "text_encoder"), ("a//b/", "a/b"), ("./a", "a")]
)
def test_subfolders_normalise(sub, expected):
    assert cache.normalize_subfolder(sub) == expected


@pytest.mark.parametrize("sub", ["../x", "a/../../b", "/etc", "a\\b", "a\0b"])
def test_subfolder_traversal_refused(sub):
    with pytest.raises(InvalidRequestError):
        cache.normalize_subfolder(sub)


@pytest.mark.parametrize("rev", ["main", "v1.0", "refs/pr/1", "a" * 40])
def test_revisions(rev):
    assert cache.validate_revision(rev) == rev


@pytest.mark.parametrize("rev", ["", "../main", "/main", "a/../b", "a\\b"])
def test_bad_revisions(rev):
    with pytest.raises(InvalidRequestError):
        cache.validate_revision(rev)


@given(st.one_of(st.text(max_size=120), st.text(alphabet="ab./-_\\", max_size=12)))
def test_validated_repo_ids_stay_inside_the_cache(raw):
    try:
        repo_id = cache.validate_repo_id(raw)
    except InvalidRequestError:
        return
    root = "/cache"
    folder = os.path.normpath(str(cache.repo_folder(cache.Path(root), "model", repo_id)))
    assert os.path.dirname(folder) == root


def test_atomic_json_roundtrip_and_corrupt_is_absent(tmp_path, caplog):
    path = tmp_path / "x" / "stamp.json"
    cache.atomic_write_json(path, {"version": 1, "a": 2})
    assert cache.read_json(path, version=1) == {"version": 1, "a": 2}
    assert cache.read_json(path, version=2) is None
    path.write_text("{not json")
    assert cache.read_json(path) is None
    assert "corrupt" in caplog.text
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_replaces_a_planted_symlink_instead_of_following_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "side" / "stamp.json"
    link.parent.mkdir()
    link.symlink_to(victim)
    assert cache.read_json(link) is None  # a link is not trusted
    cache.atomic_write_json(link, {"version": 1})
    assert victim.read_text() == "keep"
    assert not link.is_symlink()
