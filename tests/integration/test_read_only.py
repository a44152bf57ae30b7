"""Read-only caches beyond the matrix: ``prefetch_distributed`` on a read-only cache (no probe file, no
listing written by rank 0), and a writable ``.locks/`` beside read-only ``models--*`` folders. Read-only
is real: a private mount namespace with read-only bind mounts (:mod:`_readonly`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _readonly import read_only_command, refusal, wrapper_script
from test_distributed import TARGET, _env
from test_entry_matrix import ROOT, SHARDED, _repo_dir, templates

from hub_prefetch.testing import WorkerPool
from tests.support import dist_ranks

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(refusal() is not None, reason=f"needs a read-only bind mount: {refusal()}"),
]
__all__ = ["templates"]  # the fixture, shared with the matrix


def _copy(templates: dict[str, Path], state: str, into: Path) -> Path:
    shutil.copytree(_repo_dir(templates[state], SHARDED), _repo_dir(into, SHARDED), symlinks=True)
    return into


def test_distributed_on_a_read_only_cache_serves_or_fails_alike_on_every_rank(
    local_hub: Any, built_repos: Any, hf_env: dict[str, Any], templates: dict[str, Path], tmp_path: Path
) -> None:
    ro = tmp_path / "ro"
    complete = _copy(templates, "complete", ro / "complete")
    partial = _copy(templates, "partial", ro / "partial")
    python = wrapper_script(tmp_path / "python-ro", [ro], sys.executable)
    phases = [{"cache_dir": str(complete)}, {"cache_dir": str(partial)}]
    kwargs = dist_ranks.rank_kwargs(tmp_path, ["node-a", "node-a"], phases)
    env = _env(hf_env, HUB_PREFETCH_REVISION_TTL="0")  # rank 0 must ask the Hub, and cannot record it
    local_hub.reset_log()
    with WorkerPool(TARGET, kwargs, n=2, env=env, timeout=150, python=python) as pool:
        pool.wait_ready()
        pool.go()
        values = dist_ranks.ok(pool.results())
    built = built_repos["sharded"]
    served = dist_ranks.phase(values, 0)
    assert all(r["ok"] and r["commit"] == built.commit and r["warm"] for r in served), served
    assert {r["fingerprint"] for r in served} == {built.fingerprint}
    failed = dist_ranks.phase(values, 1)
    assert [r.get("error_type") for r in failed] == ["CacheWriteError", "CacheWriteError"], failed
    for rec in failed:
        assert str(partial) in rec["error"] and built.commit in rec["error"], rec
    assert local_hub.counts()["get"] == 0  # nothing could be downloaded, nothing was tried


def test_writable_lock_folder_beside_read_only_repo_folders(
    local_hub: Any, built_repos: Any, templates: dict[str, Path], tmp_path: Path
) -> None:
    """The lock is taken; every write inside it fails: verified snapshots are served all the same."""
    cells, folders = [], []
    for state in ("complete", "foreign", "partial"):
        for entry in ("prefetch", "cli_warm"):
            cache = _copy(templates, state, tmp_path / f"{entry}-{state}")
            (cache / ".locks").mkdir()
            folders.append(str(_repo_dir(cache, SHARDED)))
            cells.append({"id": f"{entry}|{state}", "entry": entry, "cache_dir": str(cache)})
    spec = tmp_path / "cells.json"
    spec.write_text(json.dumps({"cells": cells, "read_only": folders}))
    env = {
        **os.environ,
        "HF_ENDPOINT": local_hub.url,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "HUB_PREFETCH_REVISION_TTL": "0",  # the stamped one too must ask the Hub, then write nothing
    }
    cmd = read_only_command(folders, [sys.executable, "-m", "tests.support.matrix_cells", str(spec)])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {r["id"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert out.pop("_read_only")["ok"]
    commit = built_repos["sharded"].commit
    for state in ("complete", "foreign"):
        assert out[f"prefetch|{state}"] == {"id": f"prefetch|{state}", "ok": True, "value": commit}
        assert out[f"cli_warm|{state}"]["value"]["exit_code"] == 0, out[f"cli_warm|{state}"]
    failed = out["prefetch|partial"]
    assert failed["error_type"] == "CacheWriteError" and commit in failed["error"], failed
    assert out["cli_warm|partial"]["value"]["exit_code"] == 5, out["cli_warm|partial"]
    # Serving wrote nothing but the lock folder (the partial cells tried to download, and were refused).
    for cell in cells:
        if not cell["id"].endswith("|partial"):
            entries = sorted(p.name for p in Path(cell["cache_dir"]).iterdir())
            assert entries == [".locks", _repo_dir(Path(), SHARDED).name], (cell["id"], entries)
