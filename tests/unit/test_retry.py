from __future__ import annotations

import errno

import pytest
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from hub_prefetch import errors
from hub_prefetch.retry import call_with_retries, classify
from hub_prefetch.settings import Settings

try:  # huggingface_hub 2.x uses httpx2, 1.x httpx
    import httpx2 as httpx_mod
except ImportError:
    import httpx as httpx_mod  # type: ignore[no-redef]


def _http_error(cls, status, headers=None):
    request = httpx_mod.Request("GET", "http://127.0.0.1/x")
    response = httpx_mod.Response(status, headers=headers or {}, request=request)
    return cls(f"HTTP {status}", response=response)


@pytest.mark.parametrize(
    "exc,expected",
    [
        (lambda: _http_error(RepositoryNotFoundError, 404), errors.RepoNotFound),
        (lambda: _http_error(GatedRepoError, 401), errors.GatedRepoError),
        (lambda: _http_error(RevisionNotFoundError, 404), errors.RevisionNotFound),
        (lambda: _http_error(HfHubHTTPError, 403), errors.GatedRepoError),
        (lambda: _http_error(HfHubHTTPError, 400), errors.HubAccessError),
        (lambda: OSError(errno.ENOSPC, "No space left on device"), errors.CacheWriteError),
        (lambda: OSError(errno.EROFS, "Read-only file system"), errors.CacheWriteError),
    ],
)
def test_permanent_errors_are_typed_and_not_retried(exc, expected):
    verdict = classify(exc(), what="x")
    assert not verdict.retry
    assert isinstance(verdict.error, expected)


def test_entry_not_found_is_permanent():
    verdict = classify(EntryNotFoundError("no"), what="x")
    assert not verdict.retry and isinstance(verdict.error, errors.EntryNotFound)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_transient_statuses_retry(status):
    assert classify(_http_error(HfHubHTTPError, status), what="x").retry


def test_retry_after_is_honoured():
    verdict = classify(_http_error(HfHubHTTPError, 429, {"Retry-After": "7"}), what="x")
    assert verdict.retry and verdict.delay == 7.0


def test_transport_errors_retry():
    assert classify(httpx_mod.ConnectError("refused"), what="x").retry
    assert classify(httpx_mod.RemoteProtocolError("peer closed"), what="x").retry
    assert classify(
        OSError("Consistency check failed: file should be of size 10 but has size 5"), what="x"
    ).retry


def test_other_errors_are_not_retried_and_not_wrapped():
    exc = KeyError("x")
    verdict = classify(exc, what="x")
    assert not verdict.retry and verdict.error is exc


def test_call_with_retries_counts_attempts_and_never_retries_permanent(tmp_path):
    settings = Settings.from_env(cache_dir=tmp_path).replace(max_attempts=4, backoff=1.0, backoff_max=8.0)
    sleeps: list[float] = []
    calls = 0

    def flaky():
        nonlocal calls
        calls += 1
        if calls < 3:
            raise _http_error(HfHubHTTPError, 503)
        return "ok"

    assert call_with_retries(flaky, what="x", settings=settings, sleep=sleeps.append) == "ok"
    assert calls == 3 and len(sleeps) == 2 and all(0 <= s <= 2.0 for s in sleeps)

    calls = 0

    def missing():
        nonlocal calls
        calls += 1
        raise _http_error(RepositoryNotFoundError, 404)

    with pytest.raises(errors.RepoNotFound):
        call_with_retries(missing, what="x", settings=settings, sleep=sleeps.append)
    assert calls == 1


def test_call_with_retries_gives_up_with_typed_error(tmp_path):
    settings = Settings.from_env(cache_dir=tmp_path).replace(max_attempts=3)
    sleeps: list[float] = []

    def down():
        raise _http_error(HfHubHTTPError, 503, {"Retry-After": "2"})

    with pytest.raises(errors.HubUnavailableError) as info:
        call_with_retries(down, what="x", settings=settings, sleep=sleeps.append)
    assert sleeps == [2.0, 2.0]
    assert info.value.attempts == 3


def test_local_entry_not_found_is_judged_by_its_cause():
    from huggingface_hub.errors import LocalEntryNotFoundError

    def wrapped(cause):
        try:
            raise LocalEntryNotFoundError("An error happened while trying to locate the file") from cause
        except LocalEntryNotFoundError as exc:
            return exc

    outage = classify(wrapped(_http_error(HfHubHTTPError, 503)), what="x")
    assert outage.retry  # a Hub outage is not "no such file"
    missing = classify(wrapped(_http_error(RepositoryNotFoundError, 404)), what="x")
    assert not missing.retry and isinstance(missing.error, errors.RepoNotFound)
    assert classify(LocalEntryNotFoundError("no cause"), what="x").retry
