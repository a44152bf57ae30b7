"""One meaning of best effort, offline and read-only across every entry point (docs/failure-modes.md):
entry point x (online, offline, read-only) x (complete, partial, foreign-filled cache).

Each mode is one real process (its environment; for read-only, a private mount namespace with the
cells' caches bind-mounted read-only, root included) running every cell in turn, each cell on its own
copy of a cache prepared once per module: *complete* (warmed by hub-prefetch), *partial* (the same,
one weight blob of each repo deleted) and *foreign* (filled by plain ``snapshot_download``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _readonly import read_only_command, refusal

import hub_prefetch

pytestmark = pytest.mark.slow

SHARDED = "tiny/sharded-bert"
SUB = "text_encoder"
PIPE = "tiny/sd-pipe"
ROOT = Path(__file__).resolve().parents[2]
ENTRIES = ("prefetch", "prefetch_subfolders", "from_pretrained_with_prefetch", "install_pipeline", "cli_warm")
MODES = ("online", "offline", "read-only")
STATES = ("complete", "partial", "foreign")
STRICT = {"prefetch", "cli_warm"}
LOADERS = {"from_pretrained_with_prefetch", "install_pipeline"}

# What every entry point does, by mode and cache (the table of docs/failure-modes.md):
#   ok          served (loaded / a result / exit 0)
#   none        prefetch_subfolders gave up quietly (returned None), the caller's load decides
#   load-error  the loader fell back to the plain call, whose own (untyped) error is the answer
#   <Error>     the strict entry points' typed error (the CLI: its exit code)
_OFFLINE = {"partial": "OfflineCacheMissError", "foreign": "OfflineCacheMissError"}
_READ_ONLY = {"partial": "CacheWriteError"}
_EXIT = {"OfflineCacheMissError": 4, "CacheWriteError": 5}


def expected(entry: str, mode: str, state: str) -> str:
    failure = {"online": {}, "offline": _OFFLINE, "read-only": _READ_ONLY}[mode].get(state)
    if failure is None:
        return "ok"
    if entry in STRICT:
        return failure
    if entry == "prefetch_subfolders":
        return "none"
    # The loaders: the plain call loads a foreign-filled cache offline, and fails on a partial one.
    return "ok" if state == "foreign" else "load-error"


# -- caches -----------------------------------------------------------------------------------------


def _repo_dir(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def _drop_blob(cache: Path, repo_id: str, path_suffix: str) -> None:
    snapshots = _repo_dir(cache, repo_id) / "snapshots"
    links = [p for p in snapshots.rglob("*") if p.is_symlink() and str(p).endswith(path_suffix)]
    assert links, (repo_id, path_suffix)
    for link in links:
        Path(os.path.realpath(link)).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def templates(local_hub: Any, built_repos: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from huggingface_hub import snapshot_download

    root = tmp_path_factory.mktemp("matrix-templates")
    complete, partial, foreign = root / "complete", root / "partial", root / "foreign"
    hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=complete)
    hub_prefetch.prefetch_pipeline(PIPE, cache_dir=complete)
    shutil.copytree(complete, partial, symlinks=True)
    _drop_blob(partial, SHARDED, f"{SUB}/model-00002-of-00003.safetensors")
    _drop_blob(partial, PIPE, "unet/diffusion_pytorch_model.safetensors")
    for repo_id in (SHARDED, PIPE):
        snapshot_download(repo_id, cache_dir=str(foreign))
    return {"complete": complete, "partial": partial, "foreign": foreign}


def _run_mode(
    mode: str, templates: dict[str, Path], root: Path, hub_url: str
) -> tuple[subprocess.Popen[str], list[dict[str, Any]], Path]:
    folder = root / mode
    cells = []
    for entry in ENTRIES:
        repo = PIPE if entry == "install_pipeline" else SHARDED
        for state in STATES:
            cache = folder / f"{entry}-{state}"
            cache.mkdir(parents=True)
            source = _repo_dir(templates[state], repo)
            shutil.copytree(source, _repo_dir(cache, repo), symlinks=True)
            cells.append({"id": f"{entry}|{mode}|{state}", "entry": entry, "cache_dir": str(cache)})
    spec = root / f"{mode}.json"
    spec.write_text(json.dumps({"cells": cells, "read_only": [str(folder)] if mode == "read-only" else []}))
    env = {
        **os.environ,
        "HF_ENDPOINT": hub_url,
        "HF_HOME": str(root / f"{mode}-home"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "HUB_PREFETCH_MAX_ATTEMPTS": "2",
        "HUB_PREFETCH_BACKOFF": "0.01",
        "HUB_PREFETCH_BACKOFF_MAX": "0.05",
    }
    env.pop("HF_HUB_CACHE", None)
    if mode == "offline":
        env["HF_HUB_OFFLINE"] = "1"
    cmd = [sys.executable, "-m", "tests.support.matrix_cells", str(spec)]
    if mode == "read-only":
        cmd = read_only_command([folder], cmd)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    return proc, cells, folder


def _collect(proc: subprocess.Popen[str], timeout: float = 400) -> dict[str, dict[str, Any]]:
    out, err = proc.communicate(timeout=timeout)
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, err[-3000:]
    return {r["id"]: {**r, "stderr": err[-3000:]} for r in records}


@pytest.fixture(scope="module")
def outcomes(
    local_hub: Any, templates: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """Every cell's outcome; the offline process runs alone, so its window on the Hub's log is its own."""
    root = tmp_path_factory.mktemp("matrix")
    local_hub.reset_log()
    proc, _cells, _folder = _run_mode("offline", templates, root, local_hub.url)
    results = _collect(proc)
    offline_requests = len(local_hub.requests())
    refused = refusal()
    procs = [_run_mode("online", templates, root, local_hub.url)]
    if refused is None:
        procs.append(_run_mode("read-only", templates, root, local_hub.url))
    for proc, _cells, _folder in procs:
        results.update(_collect(proc))
    results["_meta"] = {"offline_requests": offline_requests, "refusal": refused}
    return results


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("entry", ENTRIES)
def test_entry_point_by_mode_and_cache(
    outcomes: dict[str, dict[str, Any]], built_repos: Any, entry: str, mode: str, state: str
) -> None:
    if mode == "read-only" and outcomes["_meta"]["refusal"]:
        pytest.skip(
            f"read-only needs a read-only bind mount in a private namespace: {outcomes['_meta']['refusal']}"
        )
    if mode == "read-only":
        assert outcomes["_read_only"]["ok"], outcomes["_read_only"]  # a write there really fails
    cell = outcomes[f"{entry}|{mode}|{state}"]
    want = expected(entry, mode, state)
    where = f"{entry} {mode} {state}: {cell}"
    if entry == "cli_warm":
        assert cell["ok"], where
        assert cell["value"]["exit_code"] == (0 if want == "ok" else _EXIT[want]), where
        if want != "ok":
            assert json.loads(cell["value"]["stdout"])["error"]["type"] == want, where
        return
    if want == "ok":
        assert cell["ok"], where
        if entry in ("prefetch", "prefetch_subfolders"):
            assert cell["value"] == built_repos["sharded"].commit, where
        elif entry == "from_pretrained_with_prefetch":
            assert cell["value"] == built_repos["sharded"].fingerprint, where
        else:
            for name, value in cell["value"].items():
                component = built_repos.get(f"sd/{name}")
                if component is not None and value is not None and len(value) == 64:
                    assert value == component.fingerprint, (name, where)
    elif want == "none":
        assert cell["ok"] and cell["value"] is None, where
    elif want == "load-error":
        assert not cell["ok"] and not cell["typed"], where  # the plain loader's own error
    else:
        assert not cell["ok"] and cell["error_type"] == want, where
        if want == "CacheWriteError":
            assert "cannot be written" in cell["error"] and built_repos["sharded"].commit in cell["error"], (
                where
            )


def test_offline_cells_made_no_request(outcomes: dict[str, dict[str, Any]]) -> None:
    assert outcomes["_meta"]["offline_requests"] == 0
