"""A local HuggingFace-Hub-compatible HTTP server with fault knobs and a request log.

It serves a :class:`~hub_prefetch.testing.store.RepoStore` the way huggingface.co does for what
``huggingface_hub`` (1.x and 2.x), ``transformers`` and ``diffusers`` ask when they download:

=====================================================  ===========================================
``GET /api/{models,datasets,spaces}/{repo}``            repo info (``/revision/{rev}``, ``?blobs=true``)
``GET /api/.../{repo}/tree/{rev}[/{path}]``             tree listing, paginated with ``Link: rel="next"``
``POST /api/.../{repo}/paths-info/{rev}``               paths info
``GET /api/.../{repo}/refs``, ``/commits/{rev}``        branches and tags, history
``GET /api/.../{repo}/discussions``                     always empty (transformers' safetensors bot)
``HEAD|GET /[datasets/|spaces/]{repo}/resolve/{rev}/{path}``   file metadata and content, ``Range``
=====================================================  ===========================================

Files answer with ``X-Repo-Commit``, a quoted ``ETag`` (sha256 for LFS files, git blob id otherwise),
``Content-Length`` and ``Accept-Ranges``. With ``redirect_lfs=True`` LFS files answer ``302`` with
``X-Linked-Etag``/``X-Linked-Size`` and an absolute ``Location`` on a second port, as the Hub does with
its CDN. Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``,
``GatedRepo``) so the client raises its own typed errors. Xet is never advertised.

A gated repo answers ``401 GatedRepo`` to file requests unless ``Authorization: Bearer <token>`` names its
token; its info and tree stay public, as on the Hub. ``/resolve`` names a commit by branch, tag or full sha.

Fault knobs and the request log are reached over HTTP under ``/_hub/``; :class:`LocalHub` wraps them, so
the same Python API drives a server in a thread (:meth:`LocalHub.start`) or in a subprocess
(:meth:`LocalHub.spawn`). Run ``python -m hub_prefetch.testing.server --root DIR`` to serve a store by hand.

Example::

    store = RepoStore(tmp_path / "store")
    store.commit("org/model", {"config.json": "{}", "model.safetensors": data})
    with LocalHub(store).start() as hub:
        hub.fail("*/resolve/*/model.safetensors", status=503)
        hf_hub_download("org/model", "model.safetensors", endpoint=hub.url, cache_dir=tmp_path / "c")
        assert hub.times_served("model.safetensors") == 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import math
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote, urlencode

from aiohttp import web

from ._faults import FaultSet, Throttle
from ._hublog import RequestRecord, bytes_served, counts, times_served
from .store import RepoStore, StoredFile

__all__ = ["Hold", "LocalHub", "RequestRecord"]

logger = logging.getLogger("hub_prefetch.testing.server")

_CHUNK = 64 * 1024
_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_API_VERBS = {"revision", "tree", "paths-info", "refs", "commits", "discussions", "resolve", "treesize"}
_READY = "LOCALHUB-READY"


class _HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> web.Response:
        headers = dict(self.headers)
        if self.code:
            headers["X-Error-Code"] = self.code
        headers["X-Error-Message"] = self.message
        return web.json_response({"error": self.message}, status=self.status, headers=headers)


@dataclass
class _Target:
    kind: str  # revision | tree | head | get | other
    repo_type: str | None = None
    repo_id: str | None = None
    verb: str = ""
    revision: str | None = None
    path: str = ""
    cdn: bool = False


# ---------------------------------------------------------------------------------------------------
# The server (runs on its own event loop, in a thread or in a subprocess)
# ---------------------------------------------------------------------------------------------------


class _HubApp:
    def __init__(self, store: RepoStore, *, redirect_lfs: bool, tree_page_size: int) -> None:
        self.store = store
        self.redirect_lfs = redirect_lfs
        self.tree_page_size = max(1, tree_page_size)
        self.faults = FaultSet()
        self.log: list[dict[str, Any]] = []
        self.cdn_origin = ""
        self.shutdown = asyncio.Event()

    # -- entry point ----------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.raw_path.split("?", 1)[0]
        if raw_path.startswith("/_hub/"):
            return await self._control(request, raw_path[len("/_hub/") :])
        target = self._route(request.method, raw_path)
        rec: dict[str, Any] = {
            "method": request.method,
            "path": unquote(raw_path),
            "kind": target.kind,
            "status": None,
            "bytes_sent": 0,
            "repo_id": target.repo_id,
            "repo_type": target.repo_type,
            "filename": target.path if target.kind in ("head", "get") else None,
            "revision": target.revision,
            "commit": None,
            "size": None,
            "range_start": None,
            "range_end": None,
            "t_start": time.time(),
            "t_end": None,
            "complete": False,
            "fault": None,
        }
        self.log.append(rec)
        try:
            resp = await self._serve(request, target, rec)
        except _HubError as err:
            resp = err.response()
        except Exception as err:  # a bug here must reach the client as a 500, and the test log
            logger.exception("local hub: error while serving %s %s", request.method, raw_path)
            resp = _HubError(500, None, f"local hub error: {err!r}").response()
        finally:
            rec["t_end"] = time.time()
        rec["status"] = resp.status
        if not isinstance(resp, web.Response) or resp.prepared:
            return resp
        # Small responses (JSON, errors, redirects) are complete when handed over.
        rec["complete"] = True
        # File bodies are streamed and counted as they go; this is an API answer, an error or a redirect.
        body = resp.body
        if request.method != "HEAD" and target.kind != "get" and isinstance(body, bytes):
            rec["bytes_sent"] = len(body)
        return resp

    def _route(self, method: str, raw_path: str) -> _Target:
        segs = [unquote(s) for s in raw_path.strip("/").split("/")]
        if segs and segs[0] == "api":
            if len(segs) >= 3 and segs[1] in _REPO_TYPES:
                repo_type = _REPO_TYPES[segs[1]]
                rest = segs[2:]
                n = self._repo_len(repo_type, rest)
                repo_id, rest = "/".join(rest[:n]), rest[n:]
                verb = rest[0] if rest else ""
                if verb == "":
                    return _Target("revision", repo_type, repo_id, "info", None)
                if verb == "revision" and len(rest) >= 2:
                    return _Target("revision", repo_type, repo_id, "info", "/".join(rest[1:]))
                if verb == "tree" and len(rest) >= 2:
                    return _Target("tree", repo_type, repo_id, "tree", rest[1], "/".join(rest[2:]).strip("/"))
                if verb in ("paths-info", "commits") and len(rest) >= 2:
                    return _Target("other", repo_type, repo_id, verb, "/".join(rest[1:]))
                return _Target("other", repo_type, repo_id, verb)
            return _Target("other", verb="api:" + "/".join(segs[1:2]))
        cdn = bool(segs) and segs[0] == "_cdn"
        if cdn:
            segs = segs[1:]
        repo_type = "model"
        if segs and segs[0] in ("datasets", "spaces", "models"):
            repo_type = _REPO_TYPES[segs[0]]
            segs = segs[1:]
        for n in (2, 1):
            if len(segs) >= n + 3 and segs[n] == "resolve":
                kind = "head" if method == "HEAD" else "get"
                return _Target(
                    kind, repo_type, "/".join(segs[:n]), "resolve", segs[n + 1], "/".join(segs[n + 2 :]), cdn
                )
        return _Target("other", verb="unknown")

    def _repo_len(self, repo_type: str, rest: Sequence[str]) -> int:
        for n in (2, 1):
            if len(rest) >= n and self._exists(repo_type, "/".join(rest[:n])):
                return n
        return 2 if len(rest) >= 2 and rest[1] not in _API_VERBS else 1

    def _exists(self, repo_type: str, repo_id: str) -> bool:
        try:
            return self.store.repo_settings(repo_id, repo_type=repo_type) is not None
        except ValueError:
            return False

    # -- Hub API --------------------------------------------------------------------------------------

    async def _serve(self, request: web.Request, t: _Target, rec: dict[str, Any]) -> web.StreamResponse:
        faults = self.faults
        path = rec["path"]
        if t.kind != "get" and faults.metadata_latency > 0:
            await asyncio.sleep(faults.metadata_latency)
        hold = faults.take("hold", request.method, path)
        if hold is not None:
            rec["fault"] = "hold"
            if not await faults.park(hold):
                raise _HubError(503, None, "local hub is stopping")
        fail = faults.take("fail", request.method, path)
        if fail is not None:
            rec["fault"] = "fail"
            headers = {}
            if fail.retry_after is not None:
                headers["Retry-After"] = f"{fail.retry_after:g}"
                if fail.status == 429:
                    # What the Hub sends with a 429; huggingface_hub 1.x reads only this one.
                    headers["RateLimit"] = f'"api";r=0;t={math.ceil(fail.retry_after)}'
                    headers["RateLimit-Policy"] = '"fixed window";"api";q=1000;w=300'
            raise _HubError(fail.status, None, f"injected failure ({fail.status})", headers)

        if t.kind == "other" and t.repo_type is None:
            if t.verb == "api:telemetry":
                return web.json_response({})
            raise _HubError(404, None, "Not Found")
        assert t.repo_type is not None and t.repo_id is not None
        settings = self._settings(t.repo_type, t.repo_id)

        if t.kind in ("head", "get"):
            if not t.cdn:
                self._check_access(request, settings)
            return await self._resolve(request, t, rec)
        if t.verb == "info":
            commit = self._commit(t.repo_type, t.repo_id, t.revision or "main")
            return web.json_response(self._info(t.repo_type, t.repo_id, commit, settings, request))
        if t.verb == "tree":
            commit = self._commit(t.repo_type, t.repo_id, t.revision or "main")
            return self._tree(request, t, commit)
        if t.verb == "paths-info" and request.method == "POST":
            commit = self._commit(t.repo_type, t.repo_id, t.revision or "main")
            form = await request.post()
            paths = [str(p) for p in form.getall("paths", [])]
            expand = str(form.get("expand", "")).lower() == "true"
            return web.json_response(self._paths_info(t.repo_type, t.repo_id, commit, paths, expand))
        if t.verb == "refs":
            refs = self.store.refs(t.repo_id, repo_type=t.repo_type)
            return web.json_response(
                {
                    "branches": [
                        {"name": n, "ref": f"refs/heads/{n}", "targetCommit": c}
                        for n, c in refs["branches"].items()
                    ],
                    "tags": [
                        {"name": n, "ref": f"refs/tags/{n}", "targetCommit": c}
                        for n, c in refs["tags"].items()
                    ],
                    "converts": [],
                    "pullRequests": [],
                }
            )
        if t.verb == "commits":
            commit = self._commit(t.repo_type, t.repo_id, t.revision or "main")
            return web.json_response(
                [
                    self._commit_json(t.repo_type, t.repo_id, c)
                    for c in self.store.history(t.repo_id, commit, repo_type=t.repo_type)
                ]
            )
        if t.verb == "discussions":
            return web.json_response({"discussions": [], "count": 0, "start": 0, "numClosedDiscussions": 0})
        raise _HubError(404, None, f"Not Found: {t.verb}")

    def _settings(self, repo_type: str, repo_id: str) -> dict[str, Any]:
        try:
            settings = self.store.repo_settings(repo_id, repo_type=repo_type)
        except ValueError:
            settings = None
        if settings is None:
            raise _HubError(404, "RepoNotFound", "Repository not found")
        return settings

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> str:
        commit = self.store.resolve(repo_id, revision, repo_type=repo_type)
        if commit is None:
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    @staticmethod
    def _check_access(request: web.Request, settings: dict[str, Any]) -> None:
        if not settings["gated"]:
            return
        token = settings["token"]
        auth = request.headers.get("Authorization", "")
        if token is not None and auth == f"Bearer {token}":
            return
        raise _HubError(
            401,
            "GatedRepo",
            "Access to model is restricted. You must have access to it and be authenticated to access it.",
        )

    def _commit_json(self, repo_type: str, repo_id: str, commit: str) -> dict[str, Any]:
        info = self.store.commit_info(repo_id, commit, repo_type=repo_type)
        title = info["message"].splitlines()[0] if info["message"] else ""
        return {
            "id": commit,
            "title": title,
            "message": info["message"],
            "authors": [{"user": "local-hub"}],
            "date": info["date"],
        }

    def _info(
        self, repo_type: str, repo_id: str, commit: str, settings: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        files = self.store.files(repo_id, commit, repo_type=repo_type)
        blobs = request.query.get("blobs", "").lower() in ("1", "true")
        siblings: list[dict[str, Any]] = []
        for path, f in sorted(files.items()):
            sib: dict[str, Any] = {"rfilename": path}
            if blobs:
                sib["size"] = f.size
                sib["blobId"] = f.git_sha1
                if f.is_lfs:
                    sib["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            siblings.append(sib)
        data: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode(), usedforsecurity=False).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/", maxsplit=1)[0] if "/" in repo_id else None,
            "sha": commit,
            "lastModified": self.store.commit_info(repo_id, commit, repo_type=repo_type)["date"],
            "createdAt": settings["created"],
            "private": False,
            "disabled": False,
            "gated": "manual" if settings["gated"] else False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(f.size for f in files.values()),
        }
        if repo_type == "model":
            data["modelId"] = repo_id
        elif repo_type == "space":
            data["sdk"] = "static"
            data["runtime"] = {"stage": "RUNNING"}
        expand = request.query.getall("expand", []) + request.query.getall("expand[]", [])
        if expand:
            data = {k: v for k, v in data.items() if k in ("_id", "id") or k in expand}
        return data

    def _entry(
        self,
        repo_type: str,
        repo_id: str,
        commit: str,
        path: str,
        *,
        files: dict[str, StoredFile],
        expand: bool,
    ) -> dict[str, Any]:
        f = files.get(path)
        if f is not None:
            entry: dict[str, Any] = {"type": "file", "oid": f.git_sha1, "size": f.size, "path": path}
            if f.is_lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
        else:
            prefix = path + "/"
            inside = sorted((p, g.git_sha1) for p, g in files.items() if p.startswith(prefix))
            oid = hashlib.sha1(json.dumps(inside).encode(), usedforsecurity=False).hexdigest()
            entry = {"type": "directory", "oid": oid, "size": 0, "path": path}
        if expand:
            last = self._last_commit(repo_type, repo_id, commit, path)
            entry["lastCommit"] = {"id": last["id"], "title": last["title"], "date": last["date"]}
        return entry

    def _last_commit(self, repo_type: str, repo_id: str, commit: str, path: str) -> dict[str, Any]:
        def state(c: str) -> list[tuple[str, str]]:
            fs = self.store.files(repo_id, c, repo_type=repo_type)
            return sorted((p, g.sha256) for p, g in fs.items() if p == path or p.startswith(path + "/"))

        history = self.store.history(repo_id, commit, repo_type=repo_type)
        current = state(commit)
        last = commit
        for c in history[1:]:
            if state(c) != current:
                break
            last = c
        return self._commit_json(repo_type, repo_id, last)

    def _tree(self, request: web.Request, t: _Target, commit: str) -> web.Response:
        assert t.repo_type is not None and t.repo_id is not None
        files = self.store.files(t.repo_id, commit, repo_type=t.repo_type)
        base = t.path
        recursive = request.query.get("recursive", "").lower() in ("1", "true")
        expand = request.query.get("expand", "").lower() in ("1", "true")
        dirs = {str(p) for f in files for p in Path(f).parents if str(p) != "."}
        if base and base not in dirs:
            if base in files:
                paths = [base]
            else:
                raise _HubError(
                    404, "EntryNotFound", f"{base} does not exist on {t.revision}", {"X-Repo-Commit": commit}
                )
        else:
            prefix = base + "/" if base else ""
            under = [p for p in sorted(dirs | set(files)) if p.startswith(prefix)]
            if not recursive:
                under = [p for p in under if "/" not in p[len(prefix) :]]
            # Folders first, then files, as the Hub lists them.
            paths = sorted(under, key=lambda p: (p not in dirs, p))
        try:
            start = int(request.query.get("cursor", "0"))
        except ValueError as err:
            raise _HubError(400, None, "invalid cursor") from err
        end = start + self.tree_page_size
        page = [
            self._entry(t.repo_type, t.repo_id, commit, p, files=files, expand=expand)
            for p in paths[start:end]
        ]
        headers = {}
        if end < len(paths):
            query = [(k, v) for k, v in request.query.items() if k != "cursor"] + [("cursor", str(end))]
            raw_path = request.raw_path.split("?", 1)[0]
            headers["Link"] = f'<{request.scheme}://{request.host}{raw_path}?{urlencode(query)}>; rel="next"'
        return web.json_response(page, headers=headers)

    def _paths_info(
        self, repo_type: str, repo_id: str, commit: str, paths: list[str], expand: bool
    ) -> list[dict[str, Any]]:
        files = self.store.files(repo_id, commit, repo_type=repo_type)
        dirs = {str(p) for f in files for p in Path(f).parents if str(p) != "."}
        out = []
        for raw in paths:
            p = raw.strip("/")
            if p in files or p in dirs:
                out.append(self._entry(repo_type, repo_id, commit, p, files=files, expand=expand))
        return out

    # -- files ----------------------------------------------------------------------------------------

    async def _resolve(self, request: web.Request, t: _Target, rec: dict[str, Any]) -> web.StreamResponse:
        assert t.repo_type is not None and t.repo_id is not None and t.revision is not None
        commit = self._commit(t.repo_type, t.repo_id, t.revision)
        rec["commit"] = commit
        files = self.store.files(t.repo_id, commit, repo_type=t.repo_type)
        f = files.get(t.path)
        if f is None:
            raise _HubError(
                404, "EntryNotFound", f"{t.path} does not exist on {t.revision}", {"X-Repo-Commit": commit}
            )
        rec["size"] = f.size
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{f.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'inline; filename="{Path(f.path).name}"',
        }
        if self.redirect_lfs and f.is_lfs and not t.cdn:
            prefix = "" if t.repo_type == "model" else f"{t.repo_type}s/"
            location = f"{self.cdn_origin}/_cdn/{prefix}{t.repo_id}/resolve/{commit}/{quote(f.path)}"
            headers.update(
                {
                    "ETag": f'"{f.git_sha1}"',
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(f.size),
                    "Location": location,
                }
            )
            del headers["Content-Disposition"]
            return web.Response(status=302, headers=headers)
        if f.is_lfs:
            headers["X-Linked-Size"] = str(f.size)
            headers["X-Linked-Etag"] = f'"{f.sha256}"'
        start, end = 0, f.size - 1
        status = 200
        range_header = request.headers.get("Range")
        if range_header:
            parsed = _parse_range(range_header, f.size)
            if parsed is None:
                headers = {"Content-Range": f"bytes */{f.size}", "X-Repo-Commit": commit}
                raise _HubError(416, None, "Requested Range Not Satisfiable", headers)
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
            rec["range_start"], rec["range_end"] = start, end
        length = end - start + 1
        if request.method == "HEAD":
            resp = web.StreamResponse(status=status, headers=headers)
            resp.content_length = length
            await resp.prepare(request)
            await resp.write_eof()
            rec["complete"] = True
            return resp
        return await self._send_body(
            request, f, status=status, headers=headers, start=start, length=length, rec=rec
        )

    async def _send_body(
        self,
        request: web.Request,
        f: StoredFile,
        *,
        status: int,
        headers: dict[str, str],
        start: int,
        length: int,
        rec: dict[str, Any],
    ) -> web.StreamResponse:
        faults = self.faults
        path = rec["path"]
        corrupt = faults.take("corrupt", "GET", path)
        drop = faults.take("drop", "GET", path)
        stall = faults.take("stall", "GET", path)
        throttle = faults.throttle_for_response()
        to_send = length
        flip_at = -1
        resp = web.StreamResponse(status=status, headers=headers)
        if corrupt is not None and corrupt.mode == "truncate":
            rec["fault"] = "truncate"
            # A well-formed but short body: chunked, so the HTTP layer sees no error and only a size check
            # against the advertised size can catch it.
            to_send = length // 2
            resp.enable_chunked_encoding()
        else:
            resp.content_length = length
            if corrupt is not None:
                rec["fault"] = "flip"
                flip_at = f.size // 2
        await resp.prepare(request)
        sent = 0
        pos = start
        with open(f.blob_path, "rb") as fh:
            fh.seek(start)
            while sent < to_send:
                if drop is not None and sent >= drop.nbytes:
                    rec["fault"] = "drop"
                    _close_transport(request)
                    return resp
                if stall is not None and sent >= stall.nbytes:
                    rec["fault"] = "stall"
                    if not await faults.wait_released(stall):
                        _close_transport(request, abort=True)
                        return resp
                    stall = None
                chunk = _CHUNK if throttle is None else throttle.chunk_size(_CHUNK)
                n = min(chunk, to_send - sent)
                if drop is not None:
                    n = min(n, drop.nbytes - sent)
                if stall is not None:
                    n = min(n, stall.nbytes - sent)
                data = fh.read(n)
                if pos <= flip_at < pos + len(data):
                    buf = bytearray(data)
                    buf[flip_at - pos] ^= 0xFF
                    data = bytes(buf)
                if throttle is not None:
                    await _throttled(throttle, faults, len(data))
                    if faults.stopping.is_set():
                        _close_transport(request, abort=True)
                        return resp
                try:
                    await resp.write(data)
                except (ConnectionError, RuntimeError):
                    return resp
                sent += len(data)
                pos += len(data)
                rec["bytes_sent"] = sent
        try:
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            return resp
        rec["complete"] = to_send == length
        return resp

    # -- control --------------------------------------------------------------------------------------

    async def _control(self, request: web.Request, op: str) -> web.StreamResponse:
        body: dict[str, Any] = {}
        if request.method == "POST" and request.can_read_body:
            body = await request.json()
        faults = self.faults
        if op == "ping":
            return web.json_response({"ok": True, "cdn": self.cdn_origin})
        if op == "fault":
            return web.json_response({"id": faults.add(body)})
        if op == "clear":
            faults.clear(int(body["id"]))
        elif op == "clear_all":
            faults.clear_all()
        elif op == "release":
            faults.release(int(body["id"]))
        elif op == "wait_arrived":
            ok = await faults.wait_arrived(int(body["id"]), int(body["n"]), float(body["timeout"]))
            rule = faults.rules.get(int(body["id"]))
            return web.json_response({"ok": ok, "arrived": rule.arrived if rule else None})
        elif op == "bandwidth":
            faults.set_bandwidth(body.get("rate"), bool(body.get("shared", True)))
        elif op == "latency":
            faults.metadata_latency = float(body["seconds"])
        elif op == "log":
            return web.json_response(self.log)
        elif op == "reset_log":
            self.log = []
        elif op == "state":
            return web.json_response(faults.snapshot())
        elif op == "shutdown":
            self.shutdown.set()
        else:
            return web.json_response({"error": f"unknown control {op!r}"}, status=404)
        return web.json_response({"ok": True})


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> inclusive (start, end), None if unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            n = int(last)
            start, end = max(0, size - n), size - 1
        else:
            start = int(first)
            end = int(last) if last else size - 1
    except ValueError:
        return None
    end = min(end, size - 1)
    if start > end or start >= size:
        return None
    return start, end


async def _throttled(throttle: Throttle, faults: FaultSet, nbytes: int) -> None:
    wait = asyncio.ensure_future(throttle.consume(nbytes))
    stop = asyncio.ensure_future(faults.stopping.wait())
    try:
        await asyncio.wait({wait, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        wait.cancel()
        stop.cancel()


def _close_transport(request: web.Request, *, abort: bool = False) -> None:
    """Cut the connection mid-body: ``close`` first flushes what was written, ``abort`` drops it."""
    transport = request.transport
    if transport is None:
        return
    if abort:
        transport.abort()
    else:
        transport.close()


async def _run_server(
    app_state: _HubApp,
    host: str,
    port: int,
    on_ready: Callable[[int, int], None],
    stop: asyncio.Event,
) -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", app_state.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024)
        await site.start()
        bound = _bound_port(site)
        cdn_port = 0
        if app_state.redirect_lfs:
            cdn = web.TCPSite(runner, host, 0, backlog=1024)
            await cdn.start()
            cdn_port = _bound_port(cdn)
            app_state.cdn_origin = f"http://{host}:{cdn_port}"
        on_ready(bound, cdn_port)
        shutdown = asyncio.ensure_future(app_state.shutdown.wait())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({shutdown, stopped}, return_when=asyncio.FIRST_COMPLETED)
        shutdown.cancel()
        stopped.cancel()
    finally:
        # Release every parked, stalled or throttled response first, so shutdown does not wait on them.
        await app_state.faults.stop()
        await runner.cleanup()


def _bound_port(site: web.TCPSite) -> int:
    # aiohttp has no public accessor for the port a site bound when asked for port 0.
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1])


# ---------------------------------------------------------------------------------------------------
# The Python API (talks to the server over HTTP, whether it runs in a thread or a subprocess)
# ---------------------------------------------------------------------------------------------------


class Hold:
    """Requests parked by :meth:`LocalHub.hold` until :meth:`release`."""

    def __init__(self, hub: LocalHub, fault_id: int) -> None:
        self._hub = hub
        self.id = fault_id

    def wait_arrived(self, n: int = 1, timeout: float = 30) -> None:
        """Block until ``n`` matching requests are parked (raise :class:`TimeoutError` after ``timeout``)."""
        answer = self._hub._call(
            "wait_arrived", {"id": self.id, "n": n, "timeout": timeout}, timeout=timeout + 10
        )
        if not answer["ok"]:
            raise TimeoutError(
                f"{answer['arrived']} of {n} requests arrived at hold {self.id} within {timeout} s"
            )

    def release(self) -> None:
        """Let the parked requests go on; later matches are not parked any more."""
        self._hub._call("release", {"id": self.id})

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class LocalHub:
    """A local Hub over ``store`` (see the module docstring); clients use ``url`` as ``HF_ENDPOINT``."""

    def __init__(
        self,
        store: RepoStore | str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        redirect_lfs: bool = False,
        tree_page_size: int = 1000,
    ) -> None:
        self.store = store if isinstance(store, RepoStore) else RepoStore(store)
        self.host = host
        self.port = port
        self.redirect_lfs = redirect_lfs
        self.tree_page_size = tree_page_size
        self.url = ""
        self.cdn_url: str | None = None
        self._ids = itertools.count(1)
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __repr__(self) -> str:
        return f"LocalHub({self.url or 'not started'}, store={self.store!r})"

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> LocalHub:
        """Serve in a background thread with its own event loop; returns ``self`` once it accepts requests."""
        if self.url:
            raise RuntimeError("LocalHub already started")
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()
        self._loop = loop
        state = _HubApp(self.store, redirect_lfs=self.redirect_lfs, tree_page_size=self.tree_page_size)

        def on_ready(port: int, cdn_port: int) -> None:
            self._set_ports(port, cdn_port)
            ready.set()

        async def main() -> None:
            self._stop = asyncio.Event()
            await _run_server(state, self.host, self.port, on_ready, self._stop)

        def run() -> None:
            try:
                loop.run_until_complete(main())
            except BaseException as err:  # noqa: BLE001 - handed to start(), which raises it
                failure.append(err)
                ready.set()
            finally:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"local-hub-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure or not self.url:
            self._thread.join(5)
            self._thread = None
            raise RuntimeError(f"local hub failed to start on {self.host}:{self.port}") from (
                failure[0] if failure else None
            )
        self._replay()
        return self

    @classmethod
    def spawn(cls, store_root: str | Path | RepoStore, **kw: Any) -> LocalHub:
        """Serve ``store_root`` from a subprocess (``python -m hub_prefetch.testing.server``); the hub
        returned drives it with the same API."""
        hub = cls(store_root, **kw)
        cmd = [
            sys.executable,
            "-m",
            "hub_prefetch.testing.server",
            "--root",
            str(hub.store.root),
            "--host",
            hub.host,
            "--port",
            str(hub.port),
            "--tree-page-size",
            str(hub.tree_page_size),
        ]
        if hub.redirect_lfs:
            cmd.append("--redirect-lfs")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        hub._proc = proc
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline() if proc.stdout else ""))
        reader.start()
        reader.join(60)
        parts = line[0].split() if line else []
        if len(parts) != 3 or parts[0] != _READY:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"local hub subprocess did not start (said {line!r}, exit {proc.poll()})")
        hub._set_ports(int(parts[1]), int(parts[2]))
        return hub

    def _set_ports(self, port: int, cdn_port: int) -> None:
        self.port = port
        self.url = f"http://{self.host}:{port}"
        self.cdn_url = f"http://{self.host}:{cdn_port}" if cdn_port else None

    def stop(self) -> None:
        """Stop serving (idempotent). Parked, stalled and throttled responses are cut, ports freed."""
        if self._proc is not None:
            proc, self._proc = self._proc, None
            if proc.poll() is None:
                with contextlib.suppress(OSError, urllib.error.URLError):
                    self._call("shutdown", {}, timeout=5)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self._thread is not None:
            loop, stop, thread = self._loop, self._stop, self._thread
            self._thread = None
            if loop is not None and stop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(stop.set)
            thread.join(30)
        self.url = ""

    def __enter__(self) -> LocalHub:
        if not self.url:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- control plumbing -----------------------------------------------------------------------------

    def _call(self, op: str, body: dict[str, Any] | None = None, *, timeout: float = 30) -> Any:
        if not self.url:
            raise RuntimeError("LocalHub is not running")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - always our own http:// url
            f"{self.url}/_hub/{op}",
            data=data,
            method="GET" if body is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        with self._opener.open(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def _send(self, op: str, body: dict[str, Any]) -> None:
        if self.url:
            self._call(op, body)
        else:
            self._pending.append((op, body))

    def _replay(self) -> None:
        pending, self._pending = self._pending, []
        for op, body in pending:
            self._call(op, body)

    def _fault(self, **spec: Any) -> int:
        spec["id"] = next(self._ids)
        self._send("fault", spec)
        return int(spec["id"])

    # -- fault knobs ----------------------------------------------------------------------------------

    def set_bandwidth(self, bytes_per_s: float | None, *, shared: bool = True) -> None:
        """Limit file bodies to ``bytes_per_s``: one link shared by every response (``shared``) or each
        response on its own; None lifts the limit."""
        self._send("bandwidth", {"rate": bytes_per_s, "shared": shared})

    def fail(
        self,
        path_glob: str,
        *,
        method: str = "*",
        status: int = 503,
        count: int = 1,
        retry_after: float | None = None,
    ) -> int:
        """Answer ``status`` (with ``Retry-After`` if given; huggingface_hub reads whole seconds only) to the
        first ``count`` matching requests (``count=-1``: all of them)."""
        return self._fault(
            kind="fail", glob=path_glob, method=method, status=status, count=count, retry_after=retry_after
        )

    def drop_after(self, path_glob: str, nbytes: int, *, count: int = 1) -> int:
        """Close the connection after ``nbytes`` of a matching GET body (headers claim the full size)."""
        return self._fault(kind="drop", glob=path_glob, method="GET", nbytes=nbytes, count=count)

    def stall(self, path_glob: str, *, after_bytes: int = 0, count: int = 1) -> int:
        """Stop sending a matching GET body after ``after_bytes`` until the fault is cleared (then the rest
        follows) or the hub stops (then the connection is cut)."""
        return self._fault(kind="stall", glob=path_glob, method="GET", nbytes=after_bytes, count=count)

    def hold(self, path_glob: str, *, method: str = "GET", count: int = 1) -> Hold:
        """Park matching requests before they are answered, until :meth:`Hold.release`."""
        return Hold(self, self._fault(kind="hold", glob=path_glob, method=method, count=count))

    def corrupt(self, path_glob: str, *, mode: str = "flip", count: int = 1) -> int:
        """``"flip"``: invert the byte at ``size // 2`` of a matching GET body (same size, wrong content);
        ``"truncate"``: send a well-formed body of half the size (chunked) while ``ETag`` and the HEAD
        answer still claim the full file."""
        if mode not in ("flip", "truncate"):
            raise ValueError(f"mode must be 'flip' or 'truncate', not {mode!r}")
        return self._fault(kind="corrupt", glob=path_glob, method="GET", mode=mode, count=count)

    def set_metadata_latency(self, seconds: float) -> None:
        """Delay every answer but file bodies (info, tree, HEAD, other API calls) by ``seconds``."""
        self._send("latency", {"seconds": seconds})

    def clear_fault(self, fault_id: int) -> None:
        """Remove one fault; a stall or hold it set lets its requests go on."""
        self._send("clear", {"id": fault_id})

    def clear_faults(self) -> None:
        """Remove every fault, the bandwidth limit and the metadata latency."""
        if self.url:
            self._call("clear_all", {})
        else:
            self._pending.clear()

    # -- request log ----------------------------------------------------------------------------------

    def requests(self) -> list[RequestRecord]:
        """Every logged request, oldest first (requests in progress included, with ``t_end=None``)."""
        return [RequestRecord.from_json(r) for r in self._call("log")]

    def counts(self) -> dict[str, int]:
        """Requests per kind: ``revision``, ``tree``, ``head``, ``get``, ``other``."""
        return counts(self.requests())

    def bytes_served(self, filename_glob: str = "*") -> int:
        """Body bytes sent for files whose repo path matches ``filename_glob``."""
        return bytes_served(self.requests(), filename_glob)

    def times_served(self, filename: str) -> int:
        """Complete GET bodies (whole file, status 200) of repo path ``filename``, in any repo."""
        return times_served(self.requests(), filename)

    def reset_log(self) -> None:
        """Forget every record, those of requests still in flight included."""
        self._call("reset_log", {})


# ---------------------------------------------------------------------------------------------------
# python -m hub_prefetch.testing.server
# ---------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hub_prefetch.testing.server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--root", required=True, help="RepoStore folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tree-page-size", type=int, default=1000)
    parser.add_argument("--redirect-lfs", action="store_true")
    args = parser.parse_args(argv)
    state = _HubApp(RepoStore(args.root), redirect_lfs=args.redirect_lfs, tree_page_size=args.tree_page_size)

    def on_ready(port: int, cdn_port: int) -> None:
        sys.stdout.write(f"{_READY} {port} {cdn_port}\n")
        sys.stdout.flush()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await _run_server(state, args.host, args.port, on_ready, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
