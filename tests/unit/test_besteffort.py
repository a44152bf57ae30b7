"""Best-effort APIs classify every exception: a bad request and MemoryError are raised, Ctrl-C and
SystemExit pass through untouched, everything else (typed or foreign) is logged once and fallen back
on; the retry classifier knows the foreign errors of proxies, network filesystems and the Xet client."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Any

import pytest
from huggingface_hub.errors import FileMetadataError

from hub_prefetch import errors, heal, reference
from hub_prefetch.besteffort import may_fall_back
from hub_prefetch.retry import call_with_retries, classify
from hub_prefetch.settings import Settings

LOG = logging.getLogger("hub_prefetch.test_besteffort")


def xet_get() -> None:
    # The name of huggingface_hub's Xet download function: hf_xet's bare RuntimeError passes through it.
    raise RuntimeError("Data processing error: CAS service error : Reqwest Error: error sending request")


def _raised_in_xet() -> RuntimeError:
    try:
        xet_get()
    except RuntimeError as exc:
        return exc
    raise AssertionError("unreachable")


FOREIGN: list[Callable[[], Exception]] = [
    lambda: FileMetadataError("Distant resource does not seem to be on huggingface.co"),
    lambda: OSError(errno.ESTALE, "Stale file handle"),
    lambda: OSError(errno.EIO, "Input/output error"),
    _raised_in_xet,
    lambda: RuntimeError("something no one expected"),
    lambda: KeyError("weight_map"),
]
TYPED_FALLBACK: list[Callable[[], Exception]] = [
    lambda: errors.RepoNotFound("no such repo"),
    lambda: errors.GatedRepoError("gated"),
    lambda: errors.OfflineCacheMissError("offline"),
    lambda: errors.CacheWriteError("read-only"),
    lambda: errors.LockTimeout("timed out"),
    lambda: errors.HubUnavailableError("down"),
]


@pytest.mark.parametrize("make", FOREIGN + TYPED_FALLBACK)
def test_everything_but_bad_input_and_memory_falls_back(make: Callable[[], Exception]) -> None:
    assert may_fall_back(make(), what="org/m", logger=LOG, then="loading without it")


@pytest.mark.parametrize("exc", [errors.InvalidRequestError("bad id"), MemoryError()])
def test_bad_input_and_memory_error_are_raised(exc: Exception) -> None:
    assert not may_fall_back(exc, what="org/m", logger=LOG, then="x")


def test_logged_at_warning_once_per_model_and_type(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOG.name):
        for _ in range(3):
            may_fall_back(RuntimeError("boom"), what="org/once", logger=LOG, then="loading without it")
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert "RuntimeError, not a known hub-prefetch error: boom" in caplog.records[0].getMessage()
    assert caplog.records[0].exc_info  # a foreign error keeps its traceback at DEBUG


# -- the retry classifier -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [FOREIGN[0], FOREIGN[1], _raised_in_xet],
    ids=["FileMetadataError", "ESTALE", "xet-RuntimeError"],
)
def test_foreign_transients_are_retried_then_typed(make: Callable[[], Exception], tmp_path: Any) -> None:
    assert classify(make(), what="x").retry
    settings = Settings.from_env(cache_dir=tmp_path).replace(max_attempts=3)
    sleeps: list[float] = []

    def failing() -> None:
        raise make()

    with pytest.raises(errors.HubUnavailableError) as info:
        call_with_retries(failing, what="x", settings=settings, sleep=sleeps.append)
    assert info.value.attempts == 3 and len(sleeps) == 2


def test_eio_is_a_cache_error_at_once() -> None:
    verdict = classify(OSError(errno.EIO, "Input/output error"), what="x")
    assert not verdict.retry
    assert isinstance(verdict.error, errors.CacheWriteError) and verdict.error.errno == errno.EIO


def test_a_plain_runtime_error_is_not_retried() -> None:
    exc = RuntimeError("CUDA out of memory")
    verdict = classify(exc, what="x")
    assert not verdict.retry and verdict.error is exc


# -- the best-effort entry points -------------------------------------------------------------------


def _raising(exc: BaseException) -> Callable[..., Any]:
    def prefetch(*_args: Any, **_kwargs: Any) -> Any:
        raise exc

    return prefetch


@pytest.mark.parametrize("make", FOREIGN + TYPED_FALLBACK)
def test_prefetch_subfolders_falls_back(
    make: Callable[[], Exception], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reference, "prefetch", _raising(make()))
    assert reference.prefetch_subfolders("org/m", ["a"]) is None
    with pytest.raises(type(make())):
        reference.prefetch_subfolders("org/m", ["a"], strict=True)


@pytest.mark.parametrize(
    "exc", [KeyboardInterrupt(), SystemExit(3), MemoryError(), errors.InvalidRequestError("bad")]
)
def test_prefetch_subfolders_never_swallows(exc: BaseException, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reference, "prefetch", _raising(exc))
    with pytest.raises(type(exc)):
        reference.prefetch_subfolders("org/m", ["a"])


@pytest.mark.parametrize("make", FOREIGN + TYPED_FALLBACK)
def test_loader_prefetch_falls_back_to_the_plain_load(
    make: Callable[[], Exception], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setattr(heal, "run", _raising(make()))
    calls: list[dict[str, Any]] = []

    def factory(model: str, **kwargs: Any) -> str:
        calls.append(kwargs)
        return "loaded"

    result = heal.from_pretrained_with_prefetch(factory, "org/m", subfolder="a", cache_dir=str(tmp_path))
    assert result == "loaded"
    assert calls == [{"subfolder": "a", "cache_dir": str(tmp_path)}]  # unpinned, not local_files_only


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(3), MemoryError()])
def test_loader_prefetch_never_swallows(
    exc: BaseException, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setattr(heal, "run", _raising(exc))
    with pytest.raises(type(exc)):
        heal.from_pretrained_with_prefetch(lambda m, **kw: m, "org/m", cache_dir=str(tmp_path))
