"""The Python side of the local Hub: :class:`LocalHub` runs the web app of :mod:`.app` in a background
thread (:meth:`LocalHub.start`) or in a subprocess (:meth:`LocalHub.spawn`) and drives its fault knobs and
request log over HTTP, so one API works for both.

Example::

    store = RepoStore(tmp_path / "store")
    store.commit("org/model", {"config.json": "{}", "model.safetensors": data})
    with LocalHub(store).start() as hub:
        hub.fail("*/resolve/*/model.safetensors", status=503)
        hf_hub_download("org/model", "model.safetensors", endpoint=hub.url, cache_dir=tmp_path / "c")
        assert hub.times_served("model.safetensors") == 1
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from ..store import RepoStore
from .app import READY, HubApp, run_server
from .log import RequestRecord, bytes_served, counts, times_served

__all__ = ["Hold", "LocalHub"]


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
    """A local Hub over ``store`` (see :mod:`.app` for what it serves); clients use ``url`` as
    ``HF_ENDPOINT``."""

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
        state = HubApp(self.store, redirect_lfs=self.redirect_lfs, tree_page_size=self.tree_page_size)

        def on_ready(port: int, cdn_port: int) -> None:
            self._set_ports(port, cdn_port)
            ready.set()

        async def main() -> None:
            self._stop = asyncio.Event()
            await run_server(state, self.host, self.port, on_ready, self._stop)

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
        """Serve ``store_root`` from a subprocess (``python -m hub_prefetch.testing.hub``); the hub
        returned drives it with the same API."""
        hub = cls(store_root, **kw)
        cmd = [
            sys.executable,
            "-m",
            "hub_prefetch.testing.hub",
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
        if len(parts) != 3 or parts[0] != READY:
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

    def set_listing_mode(self, mode: str) -> None:
        """Answer as a mirror would: ``"full"`` (the Hub), ``"bare-info"`` (the info answer names files
        without sizes or hashes; the tree has them) or ``"bare"`` (no tree API, no ``ETag``: only the
        length describes a file). :meth:`clear_faults` restores ``"full"``."""
        self._send("listing_mode", {"mode": mode})

    def clear_fault(self, fault_id: int) -> None:
        """Remove one fault; a stall or hold it set lets its requests go on."""
        self._send("clear", {"id": fault_id})

    def clear_faults(self) -> None:
        """Remove every fault, the bandwidth limit and the metadata latency; the full listing again."""
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
