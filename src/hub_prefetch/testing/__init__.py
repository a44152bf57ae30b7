"""Test your own loaders against a local Hub: a repo store, a Hub server with fault knobs, builders of
tiny real repos, real worker processes released together, and pytest fixtures.

    from hub_prefetch.testing import LocalHub, RepoStore, build_sharded_model, run_workers

Names are imported on first use, so ``import hub_prefetch.testing`` costs nothing: neither torch,
transformers nor aiohttp load until a builder, a target or the server is touched. The fixtures live in
``hub_prefetch.testing.pytest_plugin`` (``pytest_plugins = ["hub_prefetch.testing.pytest_plugin"]``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .fingerprints import tensor_fingerprint, tokenizer_fingerprint
    from .harness import WorkerError, WorkerResult
    from .hub.client import Hold, LocalHub
    from .hub.log import RequestRecord
    from .repos import (
        BuiltRepo,
        build_diffusers_pipeline,
        build_gated_repo,
        build_sharded_model,
        build_tokenizer,
        build_variant_repo,
    )
    from .store import RepoStore, StoredFile
    from .workers import WorkerPool, run_workers

_WHERE = {
    "BuiltRepo": "repos",
    "build_diffusers_pipeline": "repos",
    "build_gated_repo": "repos",
    "build_sharded_model": "repos",
    "build_tokenizer": "repos",
    "build_variant_repo": "repos",
    "tensor_fingerprint": "fingerprints",
    "tokenizer_fingerprint": "fingerprints",
    "Hold": "hub.client",
    "LocalHub": "hub.client",
    "RequestRecord": "hub.log",
    "RepoStore": "store",
    "StoredFile": "store",
    "WorkerError": "harness",
    "WorkerPool": "workers",
    "WorkerResult": "harness",
    "run_workers": "workers",
}

__all__ = [
    "BuiltRepo",
    "Hold",
    "LocalHub",
    "RepoStore",
    "RequestRecord",
    "StoredFile",
    "WorkerError",
    "WorkerPool",
    "WorkerResult",
    "build_diffusers_pipeline",
    "build_gated_repo",
    "build_sharded_model",
    "build_tokenizer",
    "build_variant_repo",
    "run_workers",
    "tensor_fingerprint",
    "tokenizer_fingerprint",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
