"""The on-disk cache of built repos: building one costs seconds (importing torch), so each build runs
once per stack and is reused by every later session.

Builds live under ``$HUB_PREFETCH_BUILD_CACHE`` (default: ``<tmp>/hub-prefetch-builds``), in one folder
per installed torch / transformers / diffusers / tokenizers / safetensors versions and builder source
(:mod:`~hub_prefetch.testing.repos`, :mod:`~hub_prefetch.testing.fingerprints` and this module).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["BUILD_FORMAT", "META", "build_cache_root", "cached_build", "folder_files"]

#: Bump when a builder changes what it writes: old cached builds are then ignored.
BUILD_FORMAT = 1
#: The metadata file of a finished build (what ``build`` returned), written last.
META = ".build.json"
#: The modules whose source is part of the cache key (siblings of this one).
_SOURCES = ("buildcache", "fingerprints", "repos")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def build_cache_root() -> Path:
    """The folder of cached builds for the installed library versions."""
    base = os.environ.get("HUB_PREFETCH_BUILD_CACHE") or str(
        Path(tempfile.gettempdir()) / "hub-prefetch-builds"
    )
    versions = [
        f"{d}-{_version(d)}" for d in ("torch", "transformers", "diffusers", "tokenizers", "safetensors")
    ]
    # The builders' own bytes are part of the key: editing a builder can never reuse a stale build.
    digest = hashlib.sha256()
    for module in _SOURCES:
        digest.update(Path(__file__).with_name(f"{module}.py").read_bytes())
    source = digest.hexdigest()
    key = hashlib.sha256(json.dumps([BUILD_FORMAT, versions, source]).encode()).hexdigest()[:16]
    return Path(base) / key


def cached_build(name: str, build: Callable[[Path], dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """Return ``(folder, meta)`` of a build, running ``build(folder)`` only if no finished one exists.

    Concurrent sessions each build into a private folder and publish it with one ``rename``; the loser
    keeps the winner's copy. A published folder is complete by construction.
    """
    root = build_cache_root()
    final = root / name
    meta_path = final / META
    if meta_path.is_file():
        return final, json.loads(meta_path.read_text())
    root.mkdir(parents=True, exist_ok=True)
    work = root / f".{name}.{uuid.uuid4().hex}.tmp"
    work.mkdir()
    try:
        meta = build(work)
        (work / META).write_text(json.dumps(meta, sort_keys=True))
        try:
            work.rename(final)
        except OSError:
            if not meta_path.is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final, json.loads(meta_path.read_text())


def folder_files(folder: Path) -> dict[str, Path]:
    """Every file a build wrote (its metadata file aside), by path relative to ``folder``, sorted."""
    return {
        p.relative_to(folder).as_posix(): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != META
    }
