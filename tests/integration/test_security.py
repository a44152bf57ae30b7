"""Security: side files never follow a planted symlink, tokens never leak, shared-cache permissions.

RepoLock's own symlink handling and lock-file modes are unit-tested in tests/unit/test_lock.py; here the
whole prefetch runs against a cache where every file it writes was replaced by a link out of the cache.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from _faultkit import Crew, failures, repo_dir, worker_env

import hub_prefetch
from hub_prefetch import cache as hp_cache
from hub_prefetch import errors
from hub_prefetch.lock import RepoLock
from hub_prefetch.prefetch import Request

SHARDED = "tiny/sharded-bert"
SUB = "text_encoder"
GATED = "tiny/gated"
TOKEN = "hf_secret"
WRONG = "hf_wrong_but_still_secret_8a7b6c"


# -- side files never follow symlinks -------------------------------------------------------------


def _side_files(cache: Path, commit: str) -> dict[str, Path]:
    req = Request.build(SHARDED, [SUB], cache_dir=cache)
    no_exist = repo_dir(cache, SHARDED) / ".no_exist" / commit
    return {
        "stamp": hp_cache.stamp_path(cache, "model", SHARDED, commit, req.selection_key),
        "listing": hp_cache.listing_path(cache, "model", SHARDED, commit),
        "revision-record": hp_cache.revision_record_path(cache, "model", SHARDED, "main"),
        "ref": hp_cache.ref_path(cache, "model", SHARDED, "main"),
        "absent-marker": no_exist / SUB / "generation_config.json",
        "root-absent-marker": no_exist / "generation_config.json",
        "lock": RepoLock(cache, SHARDED, revision="main").file,
    }


@pytest.mark.parametrize("target_exists", [True, False], ids=["to-a-file", "to-nowhere"])
def test_no_side_file_write_follows_a_planted_symlink(
    local_hub, built_repos, hf_cache, tmp_path, target_exists
):
    commit = built_repos["sharded"].commit
    files = {k: v for k, v in _side_files(hf_cache, commit).items() if k != "lock"}
    planted = _plant(files, tmp_path / "outside", target_exists=target_exists)
    hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    _assert_untouched(planted, target_exists=target_exists)
    for name, (path, _victim) in planted.items():
        assert not path.is_symlink(), f"{name} is still a link after the prefetch wrote it"
    assert hub_prefetch.verify(SHARDED, [SUB], cache_dir=hf_cache, deep=True).ok


@pytest.mark.parametrize("backend", ["flock", "lease"])
@pytest.mark.parametrize("target_exists", [True, False], ids=["to-a-file", "to-nowhere"])
def test_the_repo_lock_never_follows_a_planted_symlink(
    local_hub, built_repos, hf_cache, tmp_path, monkeypatch, backend, target_exists
):
    monkeypatch.setenv("HUB_PREFETCH_LOCK", backend)
    # A lease file that is a planted link reads as an unknown holder: the prefetch takes it over once it
    # stayed unchanged for a lease TTL. A short TTL (default 30 s) keeps the case quick; nobody else holds it.
    monkeypatch.setenv("HUB_PREFETCH_LEASE_TTL", "1")
    lock = RepoLock(hf_cache, SHARDED, revision="main", backend=backend)
    planted = _plant({"lock": lock.file}, tmp_path / "outside", target_exists=target_exists)
    try:
        hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    except errors.CacheWriteError as exc:
        assert "lock" in str(exc)  # refusing a planted lock file is a correct answer too
    _assert_untouched(planted, target_exists=target_exists)


def _plant(files: dict[str, Path], outside: Path, *, target_exists: bool) -> dict[str, tuple[Path, Path]]:
    outside.mkdir(exist_ok=True)
    planted = {}
    for name, path in files.items():
        victim = outside / name
        if target_exists:
            victim.write_text(f"precious {name}\n")
            os.utime(victim, ns=(1_000_000_000, 1_000_000_000))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(victim)
        planted[name] = (path, victim)
    return planted


def _assert_untouched(planted: dict[str, tuple[Path, Path]], *, target_exists: bool) -> None:
    for name, (_path, victim) in planted.items():
        if target_exists:
            assert victim.read_text() == f"precious {name}\n", name
            assert victim.stat().st_mtime_ns == 1_000_000_000, f"{name}: its target was touched"
        else:
            assert not victim.exists(), f"{name}: a write through the link created {victim}"


def test_a_forged_stamp_behind_a_link_is_not_trusted(local_hub, hf_cache, tmp_path):
    warm = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    stamp = _side_files(hf_cache, warm.commit)["stamp"]
    forged = tmp_path / "forged.json"
    data = json.loads(stamp.read_text())
    data["files"] = {p: 0 for p in data["files"]}  # claims everything is there and empty
    forged.write_text(json.dumps(data))
    stamp.unlink()
    stamp.symlink_to(forged)
    (Path(warm.snapshot_path) / SUB / "config.json").unlink()
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    assert not result.warm and result.downloaded == (f"{SUB}/config.json",)
    assert not stamp.is_symlink()


# -- nothing outside the cache is removed or chmodded ------------------------------------------------

SHARD2 = f"{SUB}/model-00002-of-00003.safetensors"


@pytest.mark.parametrize("how", ["prefetch", "repair"])
def test_a_snapshot_link_out_of_the_cache_never_gets_its_target_deleted(local_hub, hf_cache, tmp_path, how):
    warm = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    entry = Path(warm.snapshot_path) / SHARD2
    victim = tmp_path / "precious.safetensors"
    victim.write_bytes(b"not a shard, and someone else's")  # the wrong size: a repair wants it gone
    entry.unlink()
    entry.symlink_to(victim)
    getattr(hub_prefetch, how)(SHARDED, [SUB], cache_dir=hf_cache)
    assert victim.read_bytes() == b"not a shard, and someone else's"
    assert hub_prefetch.verify(SHARDED, [SUB], cache_dir=hf_cache, deep=True).ok


def test_a_snapshot_folder_link_out_of_the_cache_never_gets_files_deleted_there(
    local_hub, hf_cache, tmp_path
):
    warm = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    folder = Path(warm.snapshot_path) / SUB
    outside = tmp_path / "outside"
    shutil.copytree(folder, outside, symlinks=False)
    victim = outside / Path(SHARD2).name
    victim.write_bytes(b"truncated, but not ours to delete")
    shutil.rmtree(folder)
    folder.symlink_to(outside, target_is_directory=True)
    with pytest.raises(errors.IncompleteSnapshotError):
        hub_prefetch.repair(SHARDED, [SUB], cache_dir=hf_cache)
    assert victim.read_bytes() == b"truncated, but not ours to delete"


def test_a_folder_link_out_of_the_cache_is_never_chmodded(local_hub, built_repos, hf_cache, tmp_path):
    commit = built_repos["sharded"].commit
    stamps = _side_files(hf_cache, commit)["stamp"].parent
    outside = tmp_path / "private"
    outside.mkdir(mode=0o700)
    os.chmod(outside, 0o700)
    stamps.parent.mkdir(parents=True, exist_ok=True)
    stamps.symlink_to(outside, target_is_directory=True)
    hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o700


# -- tokens never leak ------------------------------------------------------------------------------


def _chain_text(exc: BaseException) -> str:
    return (
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        + repr(exc)
        + repr(getattr(exc, "facts", {}))
    )


def _cache_bytes(root: Path) -> bytes:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            out.append(full.encode())
            if not os.path.islink(full):
                with open(full, "rb") as fh:
                    out.append(fh.read())
    return b"\n".join(out)


def test_tokens_never_reach_logs_errors_or_the_cache(local_hub, hf_cache, caplog, monkeypatch):
    monkeypatch.setenv("HUB_PREFETCH_BACKOFF", "0.01")
    monkeypatch.setenv("HUB_PREFETCH_MAX_ATTEMPTS", "2")
    texts = []
    with caplog.at_level(logging.DEBUG):
        result = hub_prefetch.prefetch(GATED, [""], cache_dir=hf_cache, token=TOKEN)
        texts.append(json.dumps(result.to_dict()))
        texts.append(repr(result))
        for token, fault in [(WRONG, None), (TOKEN, 503), (WRONG, 503)]:
            local_hub.clear_faults()
            if fault:
                local_hub.fail("/api/models/*", status=fault, count=-1)
            with pytest.raises(errors.HubPrefetchError) as info:
                hub_prefetch.prefetch(
                    GATED, [""], cache_dir=hf_cache / "other", token=token, revision="v-none"
                )
            texts.append(_chain_text(info.value))
        local_hub.clear_faults()
        assert hub_prefetch.prefetch_subfolders(GATED, [""], cache_dir=hf_cache / "x", token=WRONG) is None
        report = hub_prefetch.verify(GATED, [""], cache_dir=hf_cache, token=TOKEN)
        texts.append(str(report) + json.dumps(report.to_dict()))
    texts.append(caplog.text)
    texts.extend(str(r.__dict__) for r in caplog.records)
    assert len(caplog.records) > 5  # debug logging really was on
    blob = "\n".join(texts)
    for secret in (TOKEN, WRONG):
        assert secret not in blob
        assert secret.encode() not in _cache_bytes(hf_cache)


def _cli() -> list[str] | None:
    exe = shutil.which("hub-prefetch", path=os.path.dirname(sys.executable))
    return [exe] if exe else None


@pytest.mark.skipif(_cli() is None, reason="the hub-prefetch CLI is not installed")
@pytest.mark.parametrize("how", ["argument", "HF_TOKEN"])
def test_tokens_never_reach_cli_output(local_hub, hf_cache, hf_env, how):
    runs = []
    for token, extra in [(TOKEN, []), (WRONG, []), (TOKEN, ["--revision", "no-such"])]:
        for command in (
            ["warm", GATED, "--json", "-vv"],
            ["verify", GATED, "--json", "-vv"],
            ["warm", GATED, "-vv"],
        ):
            env = {k: v for k, v in {**os.environ, **hf_env}.items() if v is not None}
            args = [*(_cli() or []), *command, "--cache-dir", str(hf_cache), *extra]
            if how == "argument":
                args += ["--token", token]
            else:
                env["HF_TOKEN"] = token
                env.pop("HF_HUB_DISABLE_IMPLICIT_TOKEN", None)  # let huggingface_hub send it
            proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=False)
            runs.append((args, proc.returncode, proc.stdout, proc.stderr))
    assert any(code == 0 for _a, code, _o, _e in runs), runs  # the right token really worked
    assert any(code != 0 for _a, code, _o, _e in runs), runs  # and the errors really were printed
    for args, _code, out, err in runs:
        for secret in (TOKEN, WRONG):
            assert secret not in out + err, (args, out, err)
        if "--json" in args:
            json.loads(out)  # one JSON document, whatever happened


# -- shared-cache permissions ----------------------------------------------------------------------


def _ours(cache: Path) -> list[Path]:
    """Every entry hub-prefetch itself creates (huggingface_hub's blobs and links are its own)."""
    folder = repo_dir(cache, SHARDED)
    roots = [folder / ".hub_prefetch", folder / ".no_exist", hp_cache.lock_dir(cache)]
    found = [folder / "refs" / "main"]
    for root in roots:
        found.append(root)
        found.extend(root.rglob("*"))
    return found


@pytest.fixture(scope="module")
def crew(local_hub, tmp_path_factory):
    c = Crew(1, worker_env(local_hub.url, tmp_path_factory.mktemp("home")))
    yield c
    c.close()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000, 0o002], ids=oct)
def test_files_we_create_are_group_shared_and_not_world_writable(local_hub, crew, tmp_path, umask):
    cache = tmp_path / "shared"
    (result,) = crew.run(
        {
            "action": "prefetch",
            "repo_id": SHARDED,
            "subfolders": [SUB],
            "cache_dir": str(cache),
            "umask": umask,
        }
    )
    assert result.ok, failures([result])
    bad = []
    for path in _ours(cache):
        mode = stat.S_IMODE(path.lstat().st_mode)
        wanted = 0o070 if path.is_dir() else 0o060
        if mode & wanted != wanted or mode & 0o002:
            bad.append(f"{oct(mode)} {path.relative_to(cache)}")
    assert bad == [], "\n".join(bad)
