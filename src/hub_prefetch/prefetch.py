"""Verified prefetch: warm check -> lock -> resolve once -> select -> download -> verify -> repair -> stamp.

The warm path reads two small JSON side-files and ``stat``s each selected file: no lock, no
network. Everything else happens under the repo lock, so one process per cache downloads while
the others wait and then take the warm path. Correctness does not rest on the lock: huggingface_hub
writes blobs atomically, and we verify what is on disk before we stamp it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, hf_hub_download

from . import cache, errors
from .lock import RepoLock
from .retry import call_with_retries
from .select import Selection, select_files
from .settings import Settings
from .verify import (
    ExpectedFile,
    Problem,
    VerifyReport,
    check_file,
    check_files,
    clean_orphan_temps,
    sizes_hold,
)

__all__ = ["PrefetchResult", "Request", "listed_path", "prefetch", "prefetch_subfolders", "repair", "verify"]

logger = logging.getLogger("hub_prefetch.prefetch")

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


@dataclass(frozen=True)
class PrefetchResult:
    """Prepared: load ``snapshot_path``, or ``revision=commit`` with ``local_files_only``."""

    repo_id: str
    repo_type: str
    revision: str
    commit: str
    snapshot_path: str
    files: tuple[str, ...]
    bytes_total: int
    bytes_downloaded: int = 0
    downloaded: tuple[str, ...] = ()
    repaired: tuple[str, ...] = ()
    warm: bool = False
    waited_s: float = 0.0
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Request:
    """One validated prefetch request; ``subfolders`` empty means root metadata only."""

    repo_id: str
    repo_type: str
    revision: str
    subfolders: tuple[str, ...]
    variant: str | None
    all_files: bool
    include_root_metadata: bool
    token: str | bool | None
    settings: Settings
    weights: bool = True

    @classmethod
    def build(
        cls,
        model: str,
        subfolders: Iterable[str] | str | None,
        *,
        revision: str | None = None,
        repo_type: str | None = None,
        variant: str | None = None,
        all_files: bool = False,
        include_root_metadata: bool = True,
        token: str | bool | None = None,
        settings: Settings | None = None,
        weights: bool = True,
        **settings_overrides: Any,
    ) -> Request:
        repo_type = repo_type or "model"
        if repo_type not in cache.REPO_TYPES:
            raise errors.InvalidRequestError(
                f"repo type must be one of {cache.REPO_TYPES}, not {repo_type!r}"
            )
        if isinstance(subfolders, str):
            subfolders = [subfolders]
        wanted = subfolders if subfolders is not None else [""]
        subs = tuple(dict.fromkeys(cache.normalize_subfolder(s) for s in wanted))
        if variant is not None and (not variant or "/" in variant or "." in variant):
            raise errors.InvalidRequestError(f"invalid variant {variant!r}")
        return cls(
            repo_id=cache.validate_repo_id(model),
            repo_type=repo_type,
            revision=cache.validate_revision(revision or "main"),
            subfolders=subs,
            variant=variant,
            all_files=all_files,
            include_root_metadata=include_root_metadata,
            token=token,
            settings=_settings(settings, settings_overrides),
            weights=weights,
        )

    @property
    def label(self) -> str:
        return f"{self.repo_id}@{self.revision}"

    @property
    def selection_key(self) -> str:
        return cache.key_hash(
            "selection-v1",
            self.subfolders,
            self.variant,
            self.all_files,
            self.include_root_metadata,
            self.weights,
        )

    def snapshot(self, commit: str) -> Path:
        return cache.snapshot_dir(self.settings.cache_dir, self.repo_type, self.repo_id, commit)


def _settings(settings: Settings | None, overrides: dict[str, Any]) -> Settings:
    """``settings`` (or the environment now) with the overrides that are not None applied."""
    if settings is None:
        return Settings.from_env(**overrides)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "cache_dir" in changes:
        changes["cache_dir"] = Path(changes["cache_dir"]).expanduser()
    return settings.replace(**changes) if changes else settings


# ---------------------------------------------------------------- side files (stamps, listings, records)


def _known_commit(req: Request, *, any_age: bool) -> str | None:
    """The commit for ``req.revision`` without asking the Hub, if we may trust what is on disk."""
    if cache.is_commit_hash(req.revision):
        return req.revision
    s = req.settings
    record = cache.read_json(
        cache.revision_record_path(s.cache_dir, req.repo_type, req.repo_id, req.revision),
        version=_RECORD_VERSION,
    )
    if record and record.get("revision") == req.revision and cache.is_commit_hash(str(record.get("commit"))):
        age = time.time() - float(record.get("resolved_at", 0))
        if any_age or 0 <= age < s.revision_ttl:
            return str(record["commit"])
    if any_age:
        raw = cache.read_bytes_nofollow(cache.ref_path(s.cache_dir, req.repo_type, req.repo_id, req.revision))
        commit = raw.decode(errors="replace").strip() if raw else ""
        if cache.is_commit_hash(commit):
            return commit
    return None


def _read_stamp(req: Request, commit: str, *, deep: bool) -> dict[str, int] | None:
    s = req.settings
    stamp = cache.read_json(
        cache.stamp_path(s.cache_dir, req.repo_type, req.repo_id, commit, req.selection_key),
        version=_STAMP_VERSION,
    )
    if not stamp or stamp.get("commit") != commit or (deep and not stamp.get("deep")):
        return None
    files = stamp.get("files")
    if not isinstance(files, dict):
        return None
    return {str(k): int(v) for k, v in files.items()}


def _write_stamp(req: Request, commit: str, files: dict[str, int], *, deep: bool) -> None:
    s = req.settings
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
            "verified_at": time.time(),
        },
    )


def _read_listing(req: Request, commit: str) -> dict[str, ExpectedFile] | None:
    s = req.settings
    data = cache.read_json(
        cache.listing_path(s.cache_dir, req.repo_type, req.repo_id, commit), version=_LISTING_VERSION
    )
    if not data or data.get("commit") != commit or not isinstance(data.get("files"), dict):
        return None
    return {path: ExpectedFile.from_json(path, raw) for path, raw in data["files"].items()}


def _fetch_listing(req: Request, revision: str) -> tuple[str, dict[str, ExpectedFile]]:
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
    cache.atomic_write_json(
        cache.listing_path(s.cache_dir, req.repo_type, req.repo_id, commit),
        {
            "version": _LISTING_VERSION,
            "commit": commit,
            "files": {p: e.to_json() for p, e in sorted(listing.items())},
        },
    )
    return commit, listing


def _guessed_index(index: str, listing: dict[str, ExpectedFile]) -> bytes:
    """A weight map naming the shards an index's file name implies (``model.safetensors.index.json``
    -> ``model-*-of-*.safetensors`` beside it)."""
    folder, _, name = index.rpartition("/")
    stem, _, rest = name.partition(".")
    suffix = "." + rest.split(".index", 1)[0]
    prefix = f"{folder}/{stem}" if folder else stem
    shards = [p for p in listing if p.startswith(prefix + "-") and p.endswith(suffix)]
    return json.dumps({"weight_map": {str(i): p.rpartition("/")[2] for i, p in enumerate(shards)}}).encode()


def _record_revision(req: Request, commit: str) -> None:
    if cache.is_commit_hash(req.revision):
        return
    s = req.settings
    cache.atomic_write_json(
        cache.revision_record_path(s.cache_dir, req.repo_type, req.repo_id, req.revision),
        {"version": _RECORD_VERSION, "revision": req.revision, "commit": commit, "resolved_at": time.time()},
    )
    # Plain loaders that read refs/<revision> then see the same commit. Written only when it changes,
    # and atomically: huggingface_hub < 1.31 truncates and rewrites it in place, which is one cause of
    # the "does not appear to have a file named" race.
    ref = cache.ref_path(s.cache_dir, req.repo_type, req.repo_id, req.revision)
    current = cache.read_bytes_nofollow(ref)
    if current is None or current.decode(errors="replace").strip() != commit:
        cache.atomic_write_bytes(ref, commit.encode())


# ---------------------------------------------------------------- downloading and repairing one file


def _remove_entry(snapshot: Path, path: str, *, blob_too: bool) -> None:
    """Drop a snapshot entry (and its blob when the blob's content is wrong) so it is fetched again."""
    target = snapshot / path
    with contextlib.suppress(OSError):
        if blob_too and target.is_symlink():
            blob = target.resolve()
            with contextlib.suppress(FileNotFoundError):
                blob.unlink()
        target.unlink()


def _download(req: Request, commit: str, path: str) -> None:
    s = req.settings
    call_with_retries(
        lambda: hf_hub_download(
            req.repo_id,
            path,
            repo_type=req.repo_type,
            revision=commit,
            cache_dir=str(s.cache_dir),
            endpoint=s.endpoint,
            token=req.token,
        ),
        what=f"{req.repo_id}@{commit[:12]}/{path}",
        settings=s,
    )


class _Fetcher:
    """Downloads what is missing or wrong in one snapshot, in parallel, and keeps the tally."""

    def __init__(self, req: Request, commit: str, listing: dict[str, ExpectedFile]) -> None:
        self.req, self.commit, self.listing = req, commit, listing
        self.snapshot = req.snapshot(commit)
        self.downloaded: list[str] = []
        self.bytes = 0
        self._lock = threading.Lock()

    def ensure(self, paths: Sequence[str]) -> None:
        todo = [p for p in paths if check_files(self.snapshot, [self.listing[p]], deep=False)]
        for p in todo:
            problem = check_files(self.snapshot, [self.listing[p]], deep=False)
            if problem and problem[0].kind == "size":
                _remove_entry(self.snapshot, p, blob_too=True)
        workers = max(1, min(self.req.settings.download_workers, len(todo)))
        if workers == 1:
            for p in todo:
                self._one(p)
            return
        with ThreadPoolExecutor(workers, thread_name_prefix="hub_prefetch") as pool:
            for future in [pool.submit(self._one, p) for p in todo]:
                future.result()

    def _one(self, path: str) -> None:
        _download(self.req, self.commit, path)
        with self._lock:
            self.downloaded.append(path)
            self.bytes += self.listing[path].size or 0

    def read(self, path: str) -> bytes:
        self.ensure([path])
        return (self.snapshot / path).read_bytes()


# ---------------------------------------------------------------- the flow


def _result(
    req: Request, commit: str, sizes: dict[str, int], *, started: float, warm: bool, **extra: Any
) -> PrefetchResult:
    return PrefetchResult(
        repo_id=req.repo_id,
        repo_type=req.repo_type,
        revision=req.revision,
        commit=commit,
        snapshot_path=str(req.snapshot(commit)),
        files=tuple(sorted(sizes)),
        bytes_total=sum(sizes.values()),
        warm=warm,
        elapsed_s=time.monotonic() - started,
        **extra,
    )


def _try_warm(req: Request, *, deep: bool, any_age: bool, started: float) -> PrefetchResult | None:
    commit = _known_commit(req, any_age=any_age)
    if commit is None:
        return None
    sizes = _read_stamp(req, commit, deep=deep)
    if sizes is None or not sizes_hold(req.snapshot(commit), sizes):
        return None
    return _result(req, commit, sizes, started=started, warm=True)


def _select(req: Request, listing: dict[str, ExpectedFile], read: Any) -> Selection:
    return select_files(
        listing,
        req.subfolders,
        load_index=read,
        variant=req.variant,
        all_files=req.all_files,
        include_root_metadata=req.include_root_metadata or not req.subfolders,
        weights=req.weights,
    )


def _offline(req: Request, *, deep: bool, started: float) -> PrefetchResult:
    """Offline and not warm: verify what the disk has against a recorded listing, or say why not."""
    commit = _known_commit(req, any_age=True)
    listing = _read_listing(req, commit) if commit else None
    if commit is None or listing is None:
        raise errors.OfflineCacheMissError(
            f"{req.label}: offline (HF_HUB_OFFLINE or local_files_only) and this cache has no verified "
            "snapshot of it; run once online, or `hub-prefetch warm` it",
            repo_id=req.repo_id,
            revision=req.revision,
        )
    snapshot = req.snapshot(commit)

    def read_local(path: str) -> bytes:
        try:
            return (snapshot / path).read_bytes()
        except OSError as exc:
            raise errors.OfflineCacheMissError(f"{req.label}: offline and {path} is not cached") from exc

    selection = _select(req, listing, read_local)
    problems = check_files(snapshot, [listing[p] for p in selection.files], deep=deep)
    if problems:
        raise errors.OfflineCacheMissError(
            f"{req.label}: offline and the cached snapshot is incomplete: "
            + ", ".join(f"{p.path} ({p.kind})" for p in problems[:5]),
            missing=[p.path for p in problems],
        )
    sizes = {p: int(listing[p].size or 0) for p in selection.files}
    with contextlib.suppress(errors.CacheWriteError):
        _write_stamp(req, commit, sizes, deep=deep)
    return _result(req, commit, sizes, started=started, warm=True)


def _locked_prefetch(
    req: Request, lock: RepoLock, *, deep: bool, force_check: bool, started: float, waited: float
) -> PrefetchResult:
    commit = _known_commit(req, any_age=False)
    listing = _read_listing(req, commit) if commit else None
    if listing is None or commit is None:
        commit, listing = _fetch_listing(req, commit or req.revision)
    _record_revision(req, commit)
    fetcher = _Fetcher(req, commit, listing)
    _clean_temps(req, lock)
    if lock.probe.flock_raises:
        _replace_blob_locks()
    selection = _select(req, listing, fetcher.read)
    fetcher.ensure(selection.files)
    expected = [listing[p] for p in selection.files]
    problems = check_files(req.snapshot(commit), expected, deep=deep)
    repaired: list[str] = []
    if problems:
        repaired = _repair(fetcher, problems)
        problems = check_files(req.snapshot(commit), expected, deep=deep)
        if problems:
            raise errors.IncompleteSnapshotError(
                f"{req.label}: snapshot still incomplete after repair: "
                + ", ".join(f"{p.path} ({p.kind})" for p in problems[:5]),
                problems=[f"{p.path}: {p.kind}" for p in problems],
            )
    sizes = {p: int(listing[p].size or 0) for p in selection.files}
    _mark_absent(req, commit, listing)
    _write_stamp(req, commit, sizes, deep=deep)
    return _result(
        req,
        commit,
        sizes,
        started=started,
        warm=False,
        bytes_downloaded=fetcher.bytes,
        downloaded=tuple(sorted(fetcher.downloaded)),
        repaired=tuple(sorted(repaired)),
        waited_s=waited,
    )


def _mark_absent(req: Request, commit: str, listing: dict[str, ExpectedFile]) -> None:
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


def _repair(fetcher: _Fetcher, problems: list[Problem]) -> list[str]:
    for problem in problems:
        logger.warning(
            "%s: repairing %s (%s: %s)", fetcher.req.label, problem.path, problem.kind, problem.detail
        )
        _remove_entry(fetcher.snapshot, problem.path, blob_too=problem.kind in ("size", "hash"))
    fetcher.ensure([p.path for p in problems])
    return [p.path for p in problems]


def run(
    req: Request, *, local_files_only: bool = False, deep: bool | None = None, force_check: bool = False
) -> PrefetchResult:
    """The whole flow for a validated request (strict: typed errors)."""
    started = time.monotonic()
    deep = req.settings.deep_verify if deep is None else deep
    offline = local_files_only or req.settings.offline
    if not force_check:
        warm = _try_warm(req, deep=deep, any_age=offline, started=started)
        if warm is not None:
            return warm
    if offline:
        return _offline(req, deep=deep, started=started)
    lock = RepoLock(
        req.settings.cache_dir,
        req.repo_id,
        repo_type=req.repo_type,
        revision=req.revision,
        settings=req.settings,
    )
    t0 = time.monotonic()
    seen: list[PrefetchResult] = []

    def peer_finished() -> bool:
        # Checked at every poll of the lock: when the holder's stamp appears, every waiter leaves at
        # once without queueing for the lock just to find nothing left to do.
        warm = None if force_check else _try_warm(req, deep=deep, any_age=False, started=started)
        if warm is not None:
            seen.append(warm)
        return warm is not None

    try:
        held = lock.acquire_unless(peer_finished)
    except errors.CacheWriteError as exc:
        return _unwritable(req, exc, deep=deep, started=started)
    if not held:
        return PrefetchResult(**{**seen[-1].to_dict(), "waited_s": time.monotonic() - t0})
    with contextlib.ExitStack() as stack:
        stack.callback(lock.release)
        waited = time.monotonic() - t0
        if not force_check:
            warm = _try_warm(req, deep=deep, any_age=False, started=started)
            if warm is not None:
                return PrefetchResult(**{**warm.to_dict(), "waited_s": waited})
        try:
            return _locked_prefetch(
                req, lock, deep=deep, force_check=force_check, started=started, waited=waited
            )
        except Exception:
            # huggingface_hub < 1.18 keeps a failed download's `<etag>.incomplete`: on a full disk that is
            # the very space the next attempt needs, and nobody else would remove it until then.
            _clean_temps(req, lock)
            raise


def _unwritable(req: Request, exc: errors.CacheWriteError, *, deep: bool, started: float) -> PrefetchResult:
    """A cache we cannot write (read-only mount, no permission): serve a verified snapshot if the
    revision still points at it, with zero writes; otherwise say why nothing can be done."""
    commit = _known_commit(req, any_age=True)
    sizes = _read_stamp(req, commit, deep=deep) if commit else None
    if commit is None or sizes is None or not sizes_hold(req.snapshot(commit), sizes):
        raise exc
    if not cache.is_commit_hash(req.revision):
        api = HfApi(endpoint=req.settings.endpoint, token=req.token)
        info = call_with_retries(
            lambda: api.repo_info(req.repo_id, repo_type=req.repo_type, revision=req.revision),
            what=req.label,
            settings=req.settings,
        )
        if info.sha != commit:
            raise errors.CacheWriteError(
                f"{req.label} now points at {info.sha}, but the cache (not writable: {exc}) holds {commit}",
                cached_commit=commit,
                current_commit=info.sha,
            ) from exc
    return _result(req, commit, sizes, started=started, warm=True)


def _clean_temps(req: Request, lock: RepoLock) -> None:
    """Remove temp files of dead or failed writers (call it holding the repo lock).

    Where kernel locks cannot be trusted, a temp file must also be older than a lease TTL.
    """
    s = req.settings
    min_age = 0.0 if lock.backend == "flock" else s.lease_ttl
    clean_orphan_temps(s.cache_dir, req.repo_type, req.repo_id, min_age_s=min_age)


_blob_locks_replaced = False
_blob_locks_guard = threading.Lock()


def _replace_blob_locks() -> None:
    """Where ``flock`` raises (ENOLCK, EOPNOTSUPP, ...), huggingface_hub's per-blob lock raises too
    (filelock falls back to a soft lock only on ENOSYS), and every download would fail. We hold the
    repo lease, which already excludes every other hub-prefetch writer of this repo, and blobs are
    written to a temp file and renamed: so, for this process, the per-blob lock becomes a no-op."""
    global _blob_locks_replaced  # noqa: PLW0603 - one process-wide switch, set once
    with _blob_locks_guard:
        if _blob_locks_replaced:
            return
        import huggingface_hub.file_download as hf_file_download  # noqa: PLC0415 - patched module

        @contextlib.contextmanager
        def no_blob_lock(lock_file: Any, *, timeout: float | None = None) -> Iterator[None]:
            yield None

        setattr(hf_file_download, "WeakFileLock", no_blob_lock)  # noqa: B010 - not a public name
        _blob_locks_replaced = True
    logger.warning(
        "flock raises on this filesystem: huggingface_hub's per-blob locks are off in this process; "
        "the repo lease lock serialises downloads instead"
    )


# ---------------------------------------------------------------- public entry points


def is_local_path(model: object) -> bool:
    return isinstance(model, (str, os.PathLike)) and os.path.isdir(os.fspath(model))


def prefetch(
    model: str,
    subfolders: Iterable[str] | str | None = None,
    *,
    revision: str | None = None,
    repo_type: str | None = None,
    variant: str | None = None,
    all_files: bool = False,
    include_root_metadata: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool | None = None,
    deep: bool | None = None,
    settings: Settings | None = None,
    lock_timeout: float | None = None,
) -> PrefetchResult:
    """Materialise and verify what loading ``subfolders`` of ``model`` needs; raise typed errors.

    ``subfolders=None`` means the repo root. Returns the commit and snapshot path to load from.
    """
    req = Request.build(
        model,
        subfolders,
        revision=revision,
        repo_type=repo_type,
        variant=variant,
        all_files=all_files,
        include_root_metadata=include_root_metadata,
        token=token,
        cache_dir=cache_dir,
        settings=settings,
        lock_timeout=lock_timeout,
    )
    return run(req, local_files_only=bool(local_files_only), deep=deep)


def verify(
    model: str,
    subfolders: Iterable[str] | str | None = None,
    *,
    revision: str | None = None,
    repo_type: str | None = None,
    variant: str | None = None,
    all_files: bool = False,
    include_root_metadata: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    deep: bool = False,
    settings: Settings | None = None,
) -> VerifyReport:
    """Report what is missing, truncated, corrupt (``deep``) or dangling; download nothing.

    Uses the listing recorded at download time; asks the Hub once only when there is none and
    not offline.
    """
    req = Request.build(
        model,
        subfolders,
        revision=revision,
        repo_type=repo_type,
        variant=variant,
        all_files=all_files,
        include_root_metadata=include_root_metadata,
        token=token,
        cache_dir=cache_dir,
        settings=settings,
    )
    commit = _known_commit(req, any_age=True)
    listing = _read_listing(req, commit) if commit else None
    if listing is None or commit is None:
        if req.settings.offline:
            raise errors.OfflineCacheMissError(f"{req.label}: offline and nothing recorded to verify against")
        commit, listing = _fetch_listing(req, commit or req.revision)
    snapshot = req.snapshot(commit)
    missing_index: list[Problem] = []

    def read_local(path: str) -> bytes:
        problem = check_file(snapshot, listing[path], deep=deep)
        if problem is None:
            try:
                return (snapshot / path).read_bytes()
            except OSError as exc:
                problem = Problem(path, "missing", f"unreadable: {exc.strerror or exc}")
        # A damaged local index cannot say which shards it names: report it, and check the shards
        # its name implies, so the report is whole and `repair` knows what to fetch.
        missing_index.append(problem)
        return _guessed_index(path, listing)

    selection = _select(req, listing, read_local)
    problems = missing_index + [
        p
        for p in check_files(snapshot, [listing[f] for f in selection.files], deep=deep)
        if p not in missing_index
    ]
    return VerifyReport(
        repo_id=req.repo_id,
        commit=commit,
        snapshot=str(snapshot),
        files=selection.files,
        deep=deep,
        problems=tuple(problems),
    )


def repair(
    model: str,
    subfolders: Iterable[str] | str | None = None,
    *,
    revision: str | None = None,
    repo_type: str | None = None,
    variant: str | None = None,
    all_files: bool = False,
    include_root_metadata: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    deep: bool = True,
    settings: Settings | None = None,
    lock_timeout: float | None = None,
) -> PrefetchResult:
    """Check every selected file (sha256 when ``deep``) under the lock and re-fetch exactly the bad ones."""
    req = Request.build(
        model,
        subfolders,
        revision=revision,
        repo_type=repo_type,
        variant=variant,
        all_files=all_files,
        include_root_metadata=include_root_metadata,
        token=token,
        cache_dir=cache_dir,
        settings=settings,
        lock_timeout=lock_timeout,
    )
    return run(req, deep=deep, force_check=True)


_reported: set[tuple[str, str]] = set()


def prefetch_subfolders(
    model: str,
    subfolders: Iterable[str],
    *,
    local_files_only: bool | None = None,
    include_root_metadata: bool = True,
    revision: str | None = None,
    repo_type: str | None = None,
    variant: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    strict: bool = False,
    settings: Settings | None = None,
    lock_timeout: float | None = None,
) -> PrefetchResult | None:
    """Materialise ``model``'s ``subfolders`` in the HF cache before loading (the reference API).

    Best-effort unless ``strict``: a Hub failure is logged once and swallowed, so the caller's own
    ``from_pretrained`` surfaces the specific error. Local directories and ``local_files_only``
    loads are a no-op. Returns what was prepared, or None when nothing was (or it failed).
    """
    if is_local_path(model):
        return None
    if local_files_only and not strict:
        return None
    try:
        return prefetch(
            model,
            list(subfolders),
            revision=revision,
            repo_type=repo_type,
            variant=variant,
            include_root_metadata=include_root_metadata,
            cache_dir=cache_dir,
            settings=settings,
            lock_timeout=lock_timeout,
            token=token,
            local_files_only=local_files_only,
        )
    except errors.InvalidRequestError:
        raise
    except errors.HubPrefetchError as exc:
        if strict:
            raise
        key = (str(model), type(exc).__name__)
        if key not in _reported:
            _reported.add(key)
            logger.warning("prefetch of %s skipped: %s: %s", model, type(exc).__name__, exc)
        return None


def listed_path(req: Request, commit: str, name: str) -> bool:
    """Does the commit's recorded listing have ``name`` (a repo path, or a path ending in it)?

    True when nothing is recorded: then we cannot tell, and healing is allowed to try.
    """
    listing = _read_listing(req, commit)
    if listing is None:
        return True
    return name in listing or any(p.endswith("/" + name) for p in listing)
