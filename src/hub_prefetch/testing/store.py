"""A repo store on disk with real commit history, served by :class:`~hub_prefetch.testing.LocalHub`.

Layout under ``root``::

    blobs/<sha256>                          content, stored once whatever repo or commit names it
    repos/<repo_type>s/<namespace>/<name>.json
                                            commits (parent, message, date, manifest), branches, tags,
                                            gated flag and access token

Every write goes through a temporary file and ``os.replace`` under a file lock on ``root/.lock``, so a
server in another process can read the store while a test commits to it, and never sees half a repo.

Commit ids are 40-hex like git's and derived from (parent, manifest, message): committing the same
change twice on the same parent yields the same commit.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from filelock import FileLock

__all__ = ["LFS_SUFFIXES", "LFS_THRESHOLD", "RepoStore", "StoredFile", "lfs_pointer"]

#: Suffixes the Hub stores with LFS (its ETag is then the sha256, not the git blob id).
LFS_SUFFIXES = frozenset(
    {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".model"}
)
#: Files at least this large are LFS whatever their suffix.
LFS_THRESHOLD = 10 * 1024 * 1024
_REPO_TYPES = ("model", "dataset", "space")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_FORMAT = 1


@dataclass(frozen=True)
class StoredFile:
    """One file of a commit.

    ``git_sha1`` is the blob id the Hub reports as ``oid``: the git sha1 of the content for a regular
    file, of the LFS pointer file for an LFS file. ``etag`` is what ``/resolve`` answers.
    """

    path: str
    size: int
    sha256: str
    git_sha1: str
    is_lfs: bool
    blob_path: Path

    @property
    def etag(self) -> str:
        return self.sha256 if self.is_lfs else self.git_sha1

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size))


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that stands for a blob in git history."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _is_lfs(path: str, size: int) -> bool:
    return PurePosixPath(path).suffix.lower() in LFS_SUFFIXES or size >= LFS_THRESHOLD


def _check_repo(repo_type: str, repo_id: str) -> None:
    if repo_type not in _REPO_TYPES:
        raise ValueError(f"repo_type must be one of {_REPO_TYPES}, not {repo_type!r}")
    parts = repo_id.split("/")
    if len(parts) > 2 or not all(_NAME_RE.fullmatch(p) for p in parts):
        raise ValueError(f"invalid repo id {repo_id!r}: expected 'name' or 'namespace/name'")


def _check_path(path: str) -> str:
    clean = path.strip("/")
    parts = clean.split("/")
    if not clean or any(p in ("", ".", "..") for p in parts) or "\\" in clean:
        raise ValueError(f"invalid path in repo: {path!r}")
    return clean


def _check_ref(name: str) -> None:
    if not name or name.startswith("/") or name.endswith("/") or ".." in name or _SHA_RE.fullmatch(name):
        raise ValueError(f"invalid branch or tag name {name!r}")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RepoStore:
    """Repos with commits, branches and tags, persisted under ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.root / ".lock"))
        self._cache: dict[Path, tuple[tuple[int, int, int], dict[str, Any]]] = {}
        self._cache_lock = threading.Lock()
        self._files_cache: dict[tuple[Path, str], dict[str, StoredFile]] = {}

    def __repr__(self) -> str:
        return f"RepoStore({str(self.root)!r})"

    # -- repo metadata ---------------------------------------------------------------------------------

    def _meta_path(self, repo_type: str, repo_id: str) -> Path:
        _check_repo(repo_type, repo_id)
        return self.root / "repos" / f"{repo_type}s" / f"{repo_id}.json"

    def _load(self, repo_type: str, repo_id: str) -> dict[str, Any] | None:
        """The repo's metadata, re-read only when the file changed (a server reads it on every request)."""
        path = self._meta_path(repo_type, repo_id)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._cache_lock:
            hit = self._cache.get(path)
            if hit is not None and hit[0] == key:
                return hit[1]
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        with self._cache_lock:
            self._cache[path] = (key, data)
        return data

    def _save(self, repo_type: str, repo_id: str, data: dict[str, Any]) -> None:
        path = self._meta_path(repo_type, repo_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._atomic_write(path, json.dumps(data, indent=1, sort_keys=True).encode())

    @staticmethod
    def _atomic_write(path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _require(self, repo_type: str, repo_id: str) -> dict[str, Any]:
        data = self._load(repo_type, repo_id)
        if data is None:
            raise KeyError(f"no {repo_type} repo {repo_id!r} in {self.root}")
        return data

    def create_repo(
        self,
        repo_id: str,
        *,
        repo_type: str = "model",
        gated: bool = False,
        token: str | None = None,
        exist_ok: bool = True,
    ) -> None:
        """Create an empty repo (no commit, no branch). An existing repo keeps its history and gets the new
        ``gated``/``token`` settings."""
        with self._lock:
            data = self._load(repo_type, repo_id)
            if data is not None and not exist_ok:
                raise FileExistsError(f"{repo_type} repo {repo_id!r} already exists")
            if data is None:
                data = {
                    "format": _FORMAT,
                    "repo_id": repo_id,
                    "repo_type": repo_type,
                    "created": _now(),
                    "commits": {},
                    "branches": {},
                    "tags": {},
                }
            else:
                data = json.loads(json.dumps(data))
            data["gated"] = gated
            data["token"] = token
            self._save(repo_type, repo_id, data)

    def repo_settings(self, repo_id: str, *, repo_type: str = "model") -> dict[str, Any] | None:
        """``{"gated", "token", "created"}`` of a repo, or None if it does not exist."""
        data = self._load(repo_type, repo_id)
        if data is None:
            return None
        return {"gated": bool(data.get("gated")), "token": data.get("token"), "created": data["created"]}

    # -- content --------------------------------------------------------------------------------------

    def _put_blob(self, content: bytes | str | Path) -> tuple[str, int]:
        if isinstance(content, Path):
            data = content.read_bytes()
        elif isinstance(content, str):
            data = content.encode()
        else:
            data = bytes(content)
        sha = hashlib.sha256(data).hexdigest()
        blob = self.root / "blobs" / sha
        if not blob.exists():
            self._atomic_write(blob, data)
        return sha, len(data)

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str | Path] | None = None,
        *,
        repo_type: str = "model",
        branch: str = "main",
        message: str = "",
        delete: Iterable[str] = (),
        parent: str | None = None,
    ) -> str:
        """Add or replace ``files`` (repo path -> bytes, text, or a local :class:`~pathlib.Path` to copy) and
        remove ``delete`` on top of ``branch``'s head (or of ``parent``), move the branch to the new commit
        and return its id. A new branch starts from an empty tree unless ``parent`` is given; a repo that
        does not exist yet is created."""
        _check_ref(branch)
        files = dict(files or {})
        blobs = {_check_path(p): self._put_blob(c) for p, c in files.items()}
        with self._lock:
            data = self._load(repo_type, repo_id)
            if data is None:
                self.create_repo(repo_id, repo_type=repo_type)
                data = self._require(repo_type, repo_id)
            data = json.loads(json.dumps(data))
            if parent is not None:
                if parent not in data["commits"]:
                    raise KeyError(f"unknown parent commit {parent!r} in {repo_id!r}")
            else:
                parent = data["branches"].get(branch)
            manifest: dict[str, list[Any]] = dict(data["commits"][parent]["files"]) if parent else {}
            for path in delete:
                clean = _check_path(path)
                if manifest.pop(clean, None) is None:
                    prefix = clean + "/"
                    doomed = [p for p in manifest if p.startswith(prefix)]
                    if not doomed:
                        raise KeyError(f"cannot delete {path!r}: not in {repo_id!r}")
                    for p in doomed:
                        del manifest[p]
            for path, (sha, size) in blobs.items():
                manifest[path] = [sha, size]
            self._check_no_file_dir_clash(manifest)
            body = json.dumps([parent, sorted(manifest.items()), message, repo_id], separators=(",", ":"))
            sha = hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest()
            if sha not in data["commits"]:
                data["commits"][sha] = {
                    "parent": parent,
                    "message": message or f"commit on {branch}",
                    "date": _now(),
                    "files": dict(sorted(manifest.items())),
                }
            data["branches"][branch] = sha
            self._save(repo_type, repo_id, data)
        return sha

    @staticmethod
    def _check_no_file_dir_clash(manifest: Mapping[str, Any]) -> None:
        dirs = {str(p) for path in manifest for p in PurePosixPath(path).parents if str(p) != "."}
        clash = dirs & set(manifest)
        if clash:
            raise ValueError(f"paths used both as a file and as a folder: {sorted(clash)}")

    def upload_folder(
        self,
        repo_id: str,
        folder: str | Path,
        *,
        path_in_repo: str = "",
        repo_type: str = "model",
        branch: str = "main",
        message: str = "",
    ) -> str:
        """Commit every file under ``folder`` at ``path_in_repo`` (hidden files, ``__pycache__`` skipped)."""
        folder = Path(folder)
        prefix = path_in_repo.strip("/")
        files: dict[str, bytes | str | Path] = {}
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if not path.is_file() or any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
                continue
            files[f"{prefix}/{rel.as_posix()}" if prefix else rel.as_posix()] = path
        return self.commit(
            repo_id, files, repo_type=repo_type, branch=branch, message=message or f"Upload {folder.name}"
        )

    # -- refs -----------------------------------------------------------------------------------------

    def _set_ref(self, repo_type: str, repo_id: str, kind: str, name: str, commit: str) -> None:
        _check_ref(name)
        with self._lock:
            data = json.loads(json.dumps(self._require(repo_type, repo_id)))
            if commit not in data["commits"]:
                raise KeyError(f"unknown commit {commit!r} in {repo_id!r}")
            data[kind][name] = commit
            self._save(repo_type, repo_id, data)

    def set_branch(self, repo_id: str, branch: str, commit: str, *, repo_type: str = "model") -> None:
        """Create ``branch`` or move it to ``commit``."""
        self._set_ref(repo_type, repo_id, "branches", branch, commit)

    def create_tag(self, repo_id: str, tag: str, commit: str, *, repo_type: str = "model") -> None:
        """Create ``tag`` (or move it, unlike git) at ``commit``."""
        self._set_ref(repo_type, repo_id, "tags", tag, commit)

    def refs(self, repo_id: str, *, repo_type: str = "model") -> dict[str, dict[str, str]]:
        """``{"branches": {name: sha}, "tags": {name: sha}}``."""
        data = self._require(repo_type, repo_id)
        return {"branches": dict(data["branches"]), "tags": dict(data["tags"])}

    def resolve(self, repo_id: str, revision: str, *, repo_type: str = "model") -> str | None:
        """Branch, tag (also ``refs/heads/x``, ``refs/tags/x``) or full commit id -> commit id, else None."""
        data = self._load(repo_type, repo_id)
        if data is None:
            return None
        if _SHA_RE.fullmatch(revision):
            return revision if revision in data["commits"] else None
        if revision.startswith("refs/heads/"):
            return data["branches"].get(revision[len("refs/heads/") :])  # type: ignore[no-any-return]
        if revision.startswith("refs/tags/"):
            return data["tags"].get(revision[len("refs/tags/") :])  # type: ignore[no-any-return]
        return data["branches"].get(revision) or data["tags"].get(revision)  # type: ignore[no-any-return]

    def commit_info(self, repo_id: str, commit: str, *, repo_type: str = "model") -> dict[str, Any]:
        """``{"id", "parent", "message", "date"}`` of a commit."""
        c = self._require(repo_type, repo_id)["commits"][commit]
        return {"id": commit, "parent": c["parent"], "message": c["message"], "date": c["date"]}

    def history(self, repo_id: str, commit: str, *, repo_type: str = "model") -> list[str]:
        """``commit`` and its ancestors, newest first."""
        commits = self._require(repo_type, repo_id)["commits"]
        out: list[str] = []
        cur: str | None = commit
        while cur is not None:
            out.append(cur)
            cur = commits[cur]["parent"]
        return out

    # -- reading --------------------------------------------------------------------------------------

    def files(self, repo_id: str, commit: str, *, repo_type: str = "model") -> dict[str, StoredFile]:
        """Every file of ``commit`` by repo path (raises KeyError for an unknown repo or commit)."""
        meta = self._meta_path(repo_type, repo_id)
        key = (meta, commit)
        hit = self._files_cache.get(key)
        if hit is not None:
            return hit
        manifest = self._require(repo_type, repo_id)["commits"][commit]["files"]
        out: dict[str, StoredFile] = {}
        for path, (sha, size) in manifest.items():
            lfs = _is_lfs(path, size)
            blob = self.root / "blobs" / sha
            git_sha1 = _git_blob_sha1(lfs_pointer(sha, size) if lfs else blob.read_bytes())
            out[path] = StoredFile(path, size, sha, git_sha1, lfs, blob)
        # Commits are immutable, so this never needs invalidating.
        self._files_cache[key] = out
        return out

    def read(self, repo_id: str, commit: str, path: str, *, repo_type: str = "model") -> bytes:
        """The bytes of ``path`` at ``commit``, as the Hub serves them."""
        return self.files(repo_id, commit, repo_type=repo_type)[path].blob_path.read_bytes()

    def repos(self) -> list[tuple[str, str]]:
        """``(repo_type, repo_id)`` of every repo, sorted."""
        out: list[tuple[str, str]] = []
        for repo_type in _REPO_TYPES:
            base = self.root / "repos" / f"{repo_type}s"
            if base.is_dir():
                out.extend(
                    (repo_type, p.relative_to(base).as_posix()[: -len(".json")]) for p in base.rglob("*.json")
                )
        return sorted(out)
