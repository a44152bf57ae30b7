"""Our side files in a repo's cache folder, each a versioned JSON written atomically.

* the **listing** of a commit: every file's size and hashes, from one metadata request;
* the **revision record**: which commit a branch pointed to, and when the Hub said so;
* the **stamp** of a verified selection: which files, of which sizes, were checked for a commit;
* ``.no_exist`` **markers** for optional files a commit lacks (huggingface_hub's own layout).

A corrupt or foreign side file reads as absent (:func:`hub_prefetch.cache.read_json`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import HfApi

from .. import cache, errors
from ..retry import call_with_retries
from ..verify import ExpectedFile
from .request import Request

__all__ = [
    "OPTIONAL_PROBES",
    "Fence",
    "fetch_listing",
    "guessed_index",
    "known_commit",
    "listed_path",
    "mark_absent",
    "read_listing",
    "read_stamp",
    "record_revision",
    "store_listing",
    "write_stamp",
]

logger = logging.getLogger("hub_prefetch.prefetch")

#: Called right before each write into the cache: raises when the writer no longer holds the repo
#: lock (fencing). Writers that hold no lock (the offline stamp, distributed resolution) pass none.
Fence = Callable[[], None]


def _no_fence() -> None:
    return None


#: Optional files transformers and diffusers probe for in a folder. A commit-pinned offline load finds
#: out they do not exist only from huggingface_hub's ``.no_exist/<commit>/`` markers, which an online
#: load leaves behind after a 404; we write them from the commit's listing, so the first offline load
#: needs no network call either.
OPTIONAL_PROBES = (
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "audio_tokenizer_config.json",
    "custom_generate/generate.py",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "scheduler_config.json",
)
_STAMP_VERSION = 1
_LISTING_VERSION = 1
_RECORD_VERSION = 1


def known_commit(req: Request, *, any_age: bool) -> str | None:
    """The commit for ``req.revision`` without asking the Hub, if we may trust what is on disk."""
    if cache.is_commit_hash(req.revision):
        return req.revision
    s = req.settings
    record = cache.read_json(
        cache.revision_record_path(s.cache_dir, req.repo_type, req.repo_id, req.revision),
        version=_RECORD_VERSION,
    )
    if record and record.get("revision") == req.revision and cache.is_commit_hash(str(record.get("commit"))):
        age = time.time() - _number(record.get("resolved_at"))
        if any_age or 0 <= age < s.revision_ttl:
            return str(record["commit"])
    if any_age:
        raw = cache.read_bytes_nofollow(cache.ref_path(s.cache_dir, req.repo_type, req.repo_id, req.revision))
        commit = raw.decode(errors="replace").strip() if raw else ""
        if cache.is_commit_hash(commit):
            return commit
    return None


def read_stamp(req: Request, commit: str, *, deep: bool) -> tuple[dict[str, int], tuple[str, ...]] | None:
    """The sizes of the files a verified stamp names, and those of them no digest could check; None when
    there is no (deep enough) stamp."""
    s = req.settings
    stamp = cache.read_json(
        cache.stamp_path(s.cache_dir, req.repo_type, req.repo_id, commit, req.selection_key),
        version=_STAMP_VERSION,
    )
    if not stamp or stamp.get("commit") != commit or (deep and not stamp.get("deep")):
        return None
    files = stamp.get("files")
    unchecked = stamp.get("unchecked", [])
    if not isinstance(files, dict) or not all(type(v) is int for v in files.values()):
        return None  # written by someone else, or damaged: not a stamp we can trust
    if not isinstance(unchecked, list):
        return None
    return {str(k): int(v) for k, v in files.items()}, tuple(str(u) for u in unchecked)


def write_stamp(
    req: Request,
    commit: str,
    files: dict[str, int],
    *,
    deep: bool,
    unchecked: tuple[str, ...] = (),
    fence: Fence = _no_fence,
) -> None:
    s = req.settings
    fence()
    cache.atomic_write_json(
        cache.stamp_path(s.cache_dir, req.repo_type, req.repo_id, commit, req.selection_key),
        {
            "version": _STAMP_VERSION,
            "repo_id": req.repo_id,
            "commit": commit,
            "subfolders": list(req.subfolders),
            "variant": req.variant,
            "deep": deep,
            "files": files,
            "unchecked": list(unchecked),
            "verified_at": time.time(),
        },
    )


def read_listing(req: Request, commit: str) -> dict[str, ExpectedFile] | None:
    s = req.settings
    data = cache.read_json(
        cache.listing_path(s.cache_dir, req.repo_type, req.repo_id, commit), version=_LISTING_VERSION
    )
    if not data or data.get("commit") != commit or not isinstance(data.get("files"), dict):
        return None
    if not all(_listing_entry(raw) for raw in data["files"].values()):
        logger.warning(
            "ignoring %s: unexpected format",
            cache.listing_path(s.cache_dir, req.repo_type, req.repo_id, commit),
        )
        return None
    return {path: ExpectedFile.from_json(path, raw) for path, raw in data["files"].items()}


def _listing_entry(raw: object) -> bool:
    """``[size, sha256, blob_id]`` as :meth:`ExpectedFile.to_json` writes it."""
    if not isinstance(raw, list) or len(raw) > 3:
        return False
    size, sha256, blob_id = [*raw, None, None, None][:3]
    return (size is None or type(size) is int) and all(
        v is None or isinstance(v, str) for v in (sha256, blob_id)
    )


def _number(raw: object) -> float:
    """A time recorded in a side file; 0 (long ago) when it is not a number."""
    return float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else 0.0


def fetch_listing(
    req: Request, revision: str, *, fence: Fence = _no_fence
) -> tuple[str, dict[str, ExpectedFile]]:
    """One metadata request: the commit a revision points to, and every file's size and hashes."""
    s = req.settings
    api = HfApi(endpoint=s.endpoint, token=req.token)
    info = call_with_retries(
        lambda: api.repo_info(req.repo_id, repo_type=req.repo_type, revision=revision, files_metadata=True),
        what=f"{req.repo_id}@{revision}",
        settings=s,
    )
    commit = str(info.sha)
    listing = {}
    for sib in getattr(info, "siblings", None) or []:
        lfs = sib.lfs
        sha256 = (
            (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)) if lfs else None
        )
        listing[sib.rfilename] = ExpectedFile(sib.rfilename, sib.size, sha256, sib.blob_id)
    if any(not _described(e) for e in listing.values()):
        listing = _from_tree(req, api, commit, listing)
    store_listing(req, commit, listing, fence=fence)
    return commit, listing


def _described(e: ExpectedFile) -> bool:
    return e.size is not None and bool(e.sha256 or e.blob_id)


def _from_tree(
    req: Request, api: HfApi, commit: str, listing: dict[str, ExpectedFile]
) -> dict[str, ExpectedFile]:
    """Sizes and hashes from the tree listing, for an endpoint whose info answer lists names only
    (some mirrors). Still one request for most repos (the tree is paginated); what neither gives comes
    from the download's own response headers, and what nothing gives is reported as unchecked."""
    logger.info("%s: the info answer lacks sizes or hashes; asking the tree listing", req.label)
    s = req.settings
    try:
        entries = call_with_retries(
            lambda: list(
                api.list_repo_tree(req.repo_id, repo_type=req.repo_type, revision=commit, recursive=True)
            ),
            what=f"{req.repo_id}@{commit[:12]} tree",
            settings=s,
        )
    except errors.HubAccessError as exc:
        # A mirror without the tree API: the files' own responses are the last source of sizes and hashes.
        logger.info("%s: no tree listing either (%s)", req.label, exc)
        return listing
    filled = dict(listing)
    for entry in entries:
        path = getattr(entry, "path", None)
        if path not in listing or _described(listing[path]) or not hasattr(entry, "size"):
            continue
        lfs = getattr(entry, "lfs", None)
        sha256 = (
            (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)) if lfs else None
        )
        old = listing[path]
        filled[path] = ExpectedFile(
            path,
            old.size if old.size is not None else entry.size,
            old.sha256 or sha256,
            old.blob_id or getattr(entry, "blob_id", None),
        )
    return filled


def store_listing(
    req: Request, commit: str, listing: dict[str, ExpectedFile], *, fence: Fence = _no_fence
) -> None:
    s = req.settings
    fence()
    try:
        cache.atomic_write_json(
            cache.listing_path(s.cache_dir, req.repo_type, req.repo_id, commit),
            {
                "version": _LISTING_VERSION,
                "commit": commit,
                "files": {p: e.to_json() for p, e in sorted(listing.items())},
            },
        )
    except errors.CacheWriteError as exc:
        # Only a saved request: a read-only cache still gets its answer (and asks again next time).
        logger.debug("%s: listing not recorded: %s", req.label, exc)


def listed_path(req: Request, commit: str, name: str) -> bool:
    """Does the commit's recorded listing have ``name`` (a repo path, or a path ending in it)?

    True when nothing is recorded: then we cannot tell, and healing is allowed to try.
    """
    listing = read_listing(req, commit)
    if listing is None:
        return True
    return name in listing or any(p.endswith("/" + name) for p in listing)


def guessed_index(index: str, listing: dict[str, ExpectedFile]) -> bytes:
    """A weight map naming the shards an index's file name implies (``model.safetensors.index.json``
    -> ``model-*-of-*.safetensors`` beside it)."""
    folder, _, name = index.rpartition("/")
    stem, _, rest = name.partition(".")
    suffix = "." + rest.split(".index", 1)[0]
    prefix = f"{folder}/{stem}" if folder else stem
    shards = [p for p in listing if p.startswith(prefix + "-") and p.endswith(suffix)]
    return json.dumps({"weight_map": {str(i): p.rpartition("/")[2] for i, p in enumerate(shards)}}).encode()


def record_revision(req: Request, commit: str, *, fence: Fence = _no_fence) -> None:
    if cache.is_commit_hash(req.revision):
        return
    s = req.settings
    fence()
    try:
        cache.atomic_write_json(
            cache.revision_record_path(s.cache_dir, req.repo_type, req.repo_id, req.revision),
            {
                "version": _RECORD_VERSION,
                "revision": req.revision,
                "commit": commit,
                "resolved_at": time.time(),
            },
        )
    except errors.CacheWriteError as exc:
        # A read-only repo folder (beside a writable lock folder): nothing to record, nothing to fix.
        logger.debug("%s: revision not recorded: %s", req.label, exc)
        return
    # Plain loaders that read refs/<revision> then see the same commit. Written only when it changes,
    # and atomically: huggingface_hub < 1.31 truncates and rewrites it in place, which is one cause of
    # the "does not appear to have a file named" race.
    ref = cache.ref_path(s.cache_dir, req.repo_type, req.repo_id, req.revision)
    current = cache.read_bytes_nofollow(ref)
    if current is None or current.decode(errors="replace").strip() != commit:
        fence()
        cache.atomic_write_bytes(ref, commit.encode())


def mark_absent(
    req: Request, commit: str, listing: dict[str, ExpectedFile], *, fence: Fence = _no_fence
) -> None:
    """``.no_exist`` markers for the optional files loaders probe for and this commit lacks."""
    fence()
    folder = cache.repo_folder(req.settings.cache_dir, req.repo_type, req.repo_id) / ".no_exist" / commit
    for sub in {*req.subfolders, ""}:
        for name in OPTIONAL_PROBES:
            path = f"{sub}/{name}" if sub else name
            if path in listing:
                continue
            try:
                _touch_marker(folder / path)
            except OSError as exc:
                logger.debug("cannot mark %s absent: %s", path, exc)
                return


def _touch_marker(marker: Path) -> None:
    """Create an empty group-shareable marker; a link planted in its place is replaced, never followed."""
    cache.ensure_dir(marker.parent)
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(marker, flags, cache.SHARED_FILE_MODE)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        marker.unlink()
        fd = os.open(marker, flags | os.O_EXCL, cache.SHARED_FILE_MODE)
    try:
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_mode & 0o777 != cache.SHARED_FILE_MODE:
                os.fchmod(fd, cache.SHARED_FILE_MODE)  # the umask may have taken group write away
    finally:
        os.close(fd)
