"""A foreign error through a real proxy: a corporate proxy in front of the local Hub that drops the Hub's
metadata headers, so huggingface_hub's ``hf_hub_download`` raises its ``FileMetadataError``. Our engine
asks no HEAD and checks against the listing: it loads through such a proxy, verified. With the
``huggingface_hub`` engine, the strict API retries the foreign error within bounds and raises a typed
``HubUnavailableError``; the best-effort API logs it once and returns None."""

from __future__ import annotations

import http.client
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import hub_prefetch
from hub_prefetch import errors

SHARDED = "tiny/sharded-bert"
SUB = "text_encoder"
_DROPPED = {"etag", "x-repo-commit", "x-linked-etag", "x-linked-size"}


def _proxy_handler(upstream: str) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            self.send_response(response.status)
            strip = "/resolve/" in self.path
            for key, value in response.getheaders():
                lowered = key.lower()
                if lowered in ("transfer-encoding", "connection", "content-length"):
                    continue
                if strip and lowered in _DROPPED:
                    continue
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_HEAD = do_POST = _forward

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@pytest.fixture
def stripping_proxy(local_hub: Any) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler(local_hub.url))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_our_engine_loads_through_a_proxy_that_drops_the_hubs_headers(
    local_hub: Any, stripping_proxy: str, hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", stripping_proxy)
    result = hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    assert result.unchecked == () and local_hub.counts()["head"] == 0
    assert hub_prefetch.verify(SHARDED, [SUB], cache_dir=hf_cache, deep=True).ok


def test_a_proxy_dropping_the_hubs_headers_is_typed_by_the_strict_api_and_skipped_by_best_effort(
    local_hub: Any, stripping_proxy: str, hf_cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monkeypatch.setenv("HUB_PREFETCH_ENGINE", "huggingface_hub")
    monkeypatch.setenv("HF_ENDPOINT", stripping_proxy)
    monkeypatch.setenv("HUB_PREFETCH_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("HUB_PREFETCH_BACKOFF", "0.01")
    monkeypatch.setenv("HUB_PREFETCH_BACKOFF_MAX", "0.02")
    with pytest.raises(errors.HubUnavailableError) as info:
        hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=hf_cache)
    assert info.value.attempts == 2
    chain, cause = [], info.value.__cause__
    while cause is not None:  # huggingface_hub wraps it in LocalEntryNotFoundError
        chain.append(type(cause).__name__)
        cause = cause.__cause__
    assert "FileMetadataError" in chain, chain
    assert local_hub.counts()["head"] >= 2  # it went through the proxy to the Hub, twice
    with caplog.at_level(logging.WARNING, logger="hub_prefetch"):
        assert hub_prefetch.prefetch_subfolders(SHARDED, [SUB], cache_dir=hf_cache / "other") is None
    # Records at WARNING and above: an earlier in-process CLI test may have left INFO on for our loggers.
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("hub_prefetch") and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1 and "HubUnavailableError" in warnings[0], warnings
    assert not list(hf_cache.rglob("*.incomplete"))
