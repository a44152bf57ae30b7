"""The public API's types, pinned: mypy checks this file (``make lint``); nothing ever runs it.

A change that breaks a caller's types (a renamed keyword, a narrower return type, a fact that is no
longer declared) fails type checking here before it reaches a user. Lines marked ``type: ignore``
must stay errors: with ``warn_unused_ignores`` mypy fails if one of them starts to type-check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from typing_extensions import assert_type

import hub_prefetch
from hub_prefetch import errors
from hub_prefetch.prefetch import Request


def strict_path(settings: hub_prefetch.Settings) -> None:
    result = hub_prefetch.prefetch(
        "org/model",
        ["text_encoder"],
        revision="main",
        variant="fp16",
        cache_dir=Path("/tmp/cache"),
        token=False,
        local_files_only=False,
        deep=True,
        settings=settings,
        lock_timeout=30.0,
    )
    assert_type(result, hub_prefetch.PrefetchResult)
    assert_type(result.commit, str)
    assert_type(result.files, tuple[str, ...])
    report = hub_prefetch.verify("org/model", "text_encoder", deep=True, settings=settings)
    assert_type(report, hub_prefetch.VerifyReport)
    assert_type(report.ok, bool)
    assert_type(hub_prefetch.repair("org/model", lock_timeout=1), hub_prefetch.PrefetchResult)
    assert_type(
        hub_prefetch.prefetch_pipeline("org/pipe", ["unet"], skip=["vae"]), hub_prefetch.PrefetchResult
    )
    assert_type(
        hub_prefetch.prefetch_distributed("org/model", cache_scope="node"), hub_prefetch.PrefetchResult
    )
    hub_prefetch.prefetch("org/model", cache="x")  # type: ignore[call-arg]
    hub_prefetch.prefetch_distributed("org/model", cache_scope="cluster")  # type: ignore[arg-type]


def reference_api() -> None:
    assert_type(hub_prefetch.prefetch_subfolders("org/model", ["a"]), hub_prefetch.PrefetchResult | None)

    def load(name: str, **kwargs: Any) -> int:
        return 1

    assert_type(hub_prefetch.retry_on_missing_shard(load, "org/model", max_attempts=2), int)
    assert_type(
        hub_prefetch.from_pretrained_with_prefetch(load, "org/model", subfolder="a", lock_timeout=5.0), int
    )


def requests() -> None:
    req = Request.build("org/model", None, revision="v1", weights=False, lock_timeout=2.0)
    assert_type(req.settings, hub_prefetch.Settings)
    Request.build("org/model", None, revison="v1")  # type: ignore[call-arg]


def the_lock(cache: Path) -> None:
    with hub_prefetch.RepoLock(cache, "org/model", timeout=5.0) as lock:
        assert_type(lock, hub_prefetch.RepoLock)
        assert_type(lock.backend, Literal["flock", "lease"])


def error_facts(exc: BaseException) -> None:
    if isinstance(exc, hub_prefetch.LockTimeout):
        assert_type(exc.waited_s, float | None)
        assert_type(exc.lock_path, str | None)
        assert_type(exc.holder, dict[str, Any] | None)
    if isinstance(exc, hub_prefetch.CacheWriteError):
        assert_type(exc.path, str | None)
    if isinstance(exc, errors.UnknownSubfolderError):
        assert_type(exc.subfolders, tuple[str, ...])
    if isinstance(exc, hub_prefetch.HubPrefetchError):
        assert_type(exc.facts, dict[str, Any])
        assert_type(exc.repo_id, str | None)
    errors.LockTimeout("t", waited="1")  # type: ignore[call-arg]
    assert_type(errors.from_json(errors.to_json(exc)), hub_prefetch.HubPrefetchError)
    assert_type(hub_prefetch.Settings.from_env(lock_timeout=3.0), hub_prefetch.Settings)
