"""The local Hub's aiohttp web app: a HuggingFace-Hub-compatible HTTP server with fault knobs and a
request log. :class:`~hub_prefetch.testing.hub.client.LocalHub` runs it and drives it.

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

Fault knobs (:mod:`.faults`) and the request log (:mod:`.log`) are reached over HTTP under ``/_hub/``, so
the same client drives a server in a thread or in a subprocess (``python -m hub_prefetch.testing.hub``).
:func:`run_server` serves a :class:`HubApp` on the running event loop until asked to stop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

from aiohttp import web

from ..store import RepoStore, StoredFile
from .faults import LISTING_MODES, FaultSet, Throttle

__all__ = ["READY", "HubApp", "run_server"]

logger = logging.getLogger("hub_prefetch.testing.hub.app")

_CHUNK = 64 * 1024
_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_API_VERBS = {"revision", "tree", "paths-info", "refs", "commits", "discussions", "resolve", "treesize"}
#: First line a server subprocess prints: ``LOCALHUB-READY <port> <cdn port or 0>``.
READY = "LOCALHUB-READY"


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


class HubApp:
    """The request handler and the state it serves from: store, fault knobs, request log."""

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
            "auth": "Authorization" in request.headers,
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
        blobs = blobs and self.faults.listing_mode == "full"
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
        if self.faults.listing_mode == "bare":
            raise _HubError(404, None, "Not Found: this mirror has no tree API")
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
        if self.faults.listing_mode == "bare":
            del headers["ETag"]
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
            if self.faults.listing_mode != "bare":
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
        elif op == "listing_mode":
            if body["mode"] not in LISTING_MODES:
                return web.json_response({"error": f"unknown listing mode {body['mode']!r}"}, status=400)
            faults.listing_mode = str(body["mode"])
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


async def run_server(
    app_state: HubApp,
    host: str,
    port: int,
    on_ready: Callable[[int, int], None],
    stop: asyncio.Event,
) -> None:
    """Serve ``app_state`` on ``host:port`` (0: any free port) and, with ``redirect_lfs``, a CDN port; call
    ``on_ready(port, cdn_port)`` once both accept requests; return when ``stop`` or a ``/_hub/shutdown``
    is set, after cutting every parked, stalled or throttled response."""
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
