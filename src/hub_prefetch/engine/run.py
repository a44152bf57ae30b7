"""The engine: files and their ranges over a bounded set of connections, each byte hashed, each file
published only once verified, every write fenced by the repo lock, and prompt cancellation.

Connections are daemon threads taking (file, range) tasks from one queue, in listing order, so a file's
ranges run side by side and its hash follows right behind. A failure that cannot heal, a lost lock or
Ctrl-C sets one cancel flag: queued ranges never start, running ones stop at their next chunk (or their
next read timeout), and every unfinished file keeps its progress for the next holder to resume. The
threads are daemons so a connection stuck in a read can never hold the interpreter's exit hostage.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import cache, errors
from ..prefetch.request import Request
from ..prefetch.sidefiles import Fence
from ..retry import transient_or_raise
from ..verify import ExpectedFile, file_digest_ok
from .digest import Verdict, etag_of
from .http import RangeIgnored, base_headers, file_url, open_part
from .job import FileJob
from .parts import Part, drop_parts
from .progress import Progress
from .publish import link_blob, partial_path, publish

__all__ = ["Cancelled", "Engine", "Outcome"]

logger = logging.getLogger("hub_prefetch.engine")

_FENCE_EVERY_S = 0.5
_JOIN_S = 1.0


def _write_all(fd: int, data: bytes, offset: int) -> None:
    """``pwrite`` until every byte is down: a filesystem running out of space writes short first."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class Cancelled(Exception):
    """Raised inside a connection when the download as a whole is being stopped."""


class _ShortBody(OSError):
    """The body ended before the range did (a cut connection): resumed, never published."""


@dataclass
class Outcome:
    """What one engine run did: paths published, bytes received, and how each file was checked."""

    downloaded: list[str] = field(default_factory=list)
    bytes_received: int = 0
    bytes_resumed: int = 0
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    learned: dict[str, ExpectedFile] = field(default_factory=dict)


class Engine:
    """Turns the listed files of one commit into verified files of its snapshot (hold the repo lock)."""

    def __init__(self, req: Request, commit: str, listing: dict[str, ExpectedFile], *, fence: Fence) -> None:
        self.req, self.commit, self.listing = req, commit, listing
        self._fence = fence
        self._fenced_at = 0.0
        self.cancel = threading.Event()
        self.outcome = Outcome()
        self._lock = threading.Lock()
        self._tasks: queue.Queue[tuple[FileJob, Part, int] | None] = queue.Queue()
        self._pending: dict[int, int] = {}  # id(job) -> ranges left in its current generation
        self._generation: dict[int, int] = {}
        self._open_jobs: set[FileJob] = set()
        self._error: BaseException | None = None
        self._progress: Progress | None = None
        self._made: set[Path] = set()  # folders created in this run: one mkdir each, not one per file
        self._headers: dict[str, str] | None = None

    # -- entry ----------------------------------------------------------------------------------------
    def fetch(self, paths: Sequence[str]) -> Outcome:
        """Download, verify and publish ``paths`` (files already in place are the caller's business)."""
        jobs = self._jobs(paths)
        if not jobs:
            return self.outcome
        s = self.req.settings
        threads: list[threading.Thread] = []
        try:
            for job in jobs:
                self._start(job)
            todo = sum(max((job.expected.size or 0) - job.resumed, 0) for job in jobs)
            self._progress = Progress(todo, label=f"{self.req.repo_id}@{self.commit[:8]}")
            connections = max(1, min(s.download_workers, self._tasks.qsize()))
            threads = [
                threading.Thread(target=self._connection, name=f"hub_prefetch-{i}", daemon=True)
                for i in range(connections)
            ]
            for t in threads:
                t.start()
            while True:
                with self._lock:
                    if self._error is not None or not self._open_jobs:
                        break
                time.sleep(0.05)  # the main thread stays interruptible: Ctrl-C lands here
        except BaseException as exc:  # noqa: BLE001 - Ctrl-C too: recorded, connections stopped, re-raised
            self._fail(exc)
        finally:
            self.cancel.set()
            for _ in threads:
                self._tasks.put(None)
            deadline = time.monotonic() + _JOIN_S
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            for job in list(self._open_jobs):
                job.keep_progress()
            if self._progress is not None:
                self._progress.close()
        if self._error is not None:
            raise self._error
        return self.outcome

    def partial_names(self) -> set[str]:
        """The names this commit's files would have as partial files (see :meth:`_jobs`)."""
        return {etag_of(e) or cache.key_hash("partial", self.commit, p) for p, e in self.listing.items()}

    # -- planning -------------------------------------------------------------------------------------
    def _jobs(self, paths: Sequence[str]) -> list[FileJob]:
        s = self.req.settings
        by_blob: dict[str, FileJob] = {}
        for path in paths:
            expected = self.listing[path]
            etag = etag_of(expected)
            name = etag or cache.key_hash("partial", self.commit, path)  # as in partial_names
            if name in by_blob:
                by_blob[name].paths.append(path)
                continue
            if etag and self._have_blob(etag, expected):
                link_blob(self.req, self.commit, etag, [path], fence=self._fence, made=self._made)
                self.outcome.downloaded.append(path)  # relinked, as hf_hub_download would: no bytes
                self.outcome.verdicts[path] = "verified"
                continue
            by_blob[name] = FileJob(
                expected,
                [path],
                partial_path(self.req, name),
                part_size=s.part_size,
                connections=s.download_workers,
            )
        return list(by_blob.values())

    def _start(self, job: FileJob, *, fresh: bool = False) -> None:
        self.fence(force=True)
        try:
            job.open(fresh=fresh)
        except OSError as exc:
            raise self._cache_error(exc, job) from exc
        with self._lock:
            self._open_jobs.add(job)
            gen = self._generation.get(id(job), 0) + 1
            self._generation[id(job)] = gen
            left = [p for p in job.parts if not p.complete]
            self._pending[id(job)] = len(left)
        if job.resumed:
            logger.info("%s: resuming %s at %d bytes", self.req.label, job.paths[0], job.resumed)
            self.outcome.bytes_resumed += job.resumed
        for part in left:
            self._tasks.put((job, part, gen))
        if not left:
            self._finish(job)

    def _have_blob(self, etag: str, expected: ExpectedFile) -> bool:
        """A blob of this etag already in ``blobs/`` (another commit's, or a holder killed between the
        rename and the link) is linked, not fetched, once its bytes hash to the listing's digest: reading
        the local disk costs far less than the network, and an unverified blob is never trusted."""
        blob = cache.blobs_dir(self.req.settings.cache_dir, self.req.repo_type, self.req.repo_id) / etag
        try:
            st = os.lstat(blob)
            if not stat.S_ISREG(st.st_mode) or st.st_size != expected.size:
                return False
            return file_digest_ok(blob, expected) is True  # None: no digest to trust it by
        except OSError:
            return False

    # -- connections ----------------------------------------------------------------------------------
    def _connection(self) -> None:
        while not self.cancel.is_set():
            task = self._tasks.get()
            if task is None:
                return
            job, part, gen = task
            try:
                if self._generation.get(id(job)) != gen:
                    continue
                gen = self._part_with_retries(job, part, gen)
                with self._lock:
                    if self._generation.get(id(job)) != gen:
                        continue
                    self._pending[id(job)] -= 1
                    last = self._pending[id(job)] == 0
                if last:
                    self._finish(job)
            except Cancelled:
                return
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which re-raises it
                self._fail(exc)
                return

    def _part_with_retries(self, job: FileJob, part: Part, gen: int) -> int:
        """Stream ``part`` to its end, resuming after transient failures; the job's generation after."""
        s = self.req.settings
        path = job.paths[0]
        what = f"{self.req.repo_id}@{self.commit[:12]}/{path}"
        url = file_url(self.req, self.commit, path)
        attempts = 0
        while not part.complete:
            self._check(job, gen)
            before = part.done
            try:
                self._stream(job, part, gen, url)
            except RangeIgnored:
                logger.info("%s: the server ignores Range; %s goes over one stream", self.req.label, path)
                with self._lock:
                    self._generation[id(job)] = gen = gen + 1
                    self._pending[id(job)] = 1
                job.reopen_single()
                part = job.parts[0]
                continue
            except Cancelled:
                raise
            except Exception as exc:
                attempts = 1 if part.done > before else attempts + 1  # progress starts the count again
                delay = transient_or_raise(exc, what=what, attempt=attempts, settings=s)
                logger.info("%s: %s; resuming at byte %d in %.2f s", what, exc, part.offset, delay)
                if self.cancel.wait(delay):
                    raise Cancelled() from exc
        return gen

    def _stream(self, job: FileJob, part: Part, gen: int, url: str) -> None:
        single = len(job.parts) == 1
        if self._headers is None:
            self._headers = base_headers(self.req)  # once per download, not once per file
        with open_part(self.req, url, part, single=single, base=self._headers) as response:
            if part.start == 0 and part.done == 0:
                job.learn(response.headers)
                if part.end is None and job.expected.size is not None:
                    part.end = job.expected.size
            for received in response.iter_bytes():
                self._check(job, gen)
                chunk = received if part.end is None else received[: max(part.end - part.offset, 0)]
                if not chunk:
                    break
                offset = part.offset
                try:
                    _write_all(job.fd, chunk, offset)
                except OSError as exc:
                    raise self._cache_error(exc, job) from exc
                job.wrote(part, offset, chunk)
                with self._lock:
                    self.outcome.bytes_received += len(chunk)
                if self._progress is not None:
                    self._progress.add(len(chunk))
        if part.end is None:
            job.ended(part)
        elif not part.complete:
            raise _ShortBody(f"the body ended at byte {part.offset} of {part.end}")

    # -- the end of a file ----------------------------------------------------------------------------
    def _finish(self, job: FileJob) -> None:
        job.hash_forward(wait=True)
        size = job.received_size()
        e = job.expected
        bad_size = e.size is not None and size != e.size
        if bad_size or not job.digest.matches():
            got = f"{size} bytes" if bad_size else job.digest.hexdigest()
            want = f"{e.size} bytes" if bad_size else job.digest.want
            if job.attempt == 1:
                job.attempt = 2
                logger.warning(
                    "%s: %s arrived as %s, the listing says %s; fetching it again",
                    self.req.label,
                    job.paths[0],
                    got,
                    want,
                )
                self._start(job, fresh=True)
                return
            job.discard()
            with self._lock:
                self._open_jobs.discard(job)
            raise errors.ChecksumMismatchError(
                f"{self.req.label}: {job.paths[0]} arrived twice with {got} where the listing says {want}; "
                "nothing of it was published",
                path=job.paths[0],
                expected=want,
                received=got,
                problems=[f"{job.paths[0]}: hash"],
                repo_id=self.req.repo_id,
                revision=self.req.revision,
            )
        etag = etag_of(job.expected) or cache.key_hash("unverified", self.commit, job.paths[0])
        job.close()
        self.fence(force=True)
        try:
            publish(self.req, self.commit, etag, job.paths, job.partial, fence=self._fence, made=self._made)
        except errors.CacheWriteError as exc:
            if exc.errno != errno.ENOENT:
                raise
            # The partial file went away under us: a holder that took the lock from us published it (then
            # the fence says so), or an evicted one we replaced did. Its bytes are the same bytes: link
            # the published blob once it hashes right, else fetch the file again.
            self.fence(force=True)
            if not (etag_of(job.expected) and self._have_blob(etag, job.expected)):
                if job.attempt > 1:
                    raise
                job.attempt = 2
                self._start(job, fresh=True)
                return
            logger.info("%s: %s was published by another holder; linking it", self.req.label, job.paths[0])
            link_blob(self.req, self.commit, etag, job.paths, fence=self._fence, made=self._made)
        drop_parts(job.partial)
        with self._lock:
            self._open_jobs.discard(job)
            for path in job.paths:
                self.outcome.downloaded.append(path)
                self.outcome.verdicts[path] = job.digest.verdict
                if job.expected != self.listing[path]:
                    self.outcome.learned[path] = ExpectedFile(
                        path, job.expected.size, job.expected.sha256, job.expected.blob_id
                    )

    # -- guards ---------------------------------------------------------------------------------------
    def fence(self, *, force: bool = False) -> None:
        """The lock check, at most every half second from the connections, always before publishing."""
        now = time.monotonic()
        if force or now - self._fenced_at > _FENCE_EVERY_S:
            self._fence()
            self._fenced_at = now

    def _check(self, job: FileJob, gen: int) -> None:
        if self.cancel.is_set() or self._generation.get(id(job)) != gen:
            raise Cancelled()
        self.fence()

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc
        self.cancel.set()

    def _cache_error(self, exc: OSError, job: FileJob) -> errors.CacheWriteError:
        job.discard()  # a full disk needs the space; a read-only one has nothing to keep
        with self._lock:
            self._open_jobs.discard(job)
        return errors.CacheWriteError(
            f"{self.req.label}: cannot write {job.partial}: {exc.strerror or exc}",
            path=str(job.partial),
            errno=exc.errno,
            repo_id=self.req.repo_id,
            revision=self.req.revision,
        )


def run_engine(
    req: Request, commit: str, listing: dict[str, ExpectedFile], paths: Sequence[str], *, fence: Fence
) -> Outcome:
    return Engine(req, commit, listing, fence=fence).fetch(paths)
