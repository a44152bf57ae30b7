"""Worker targets for the protected path, mirroring :mod:`hub_prefetch.testing.targets`.

Each returns what the plain target returns (fingerprints to compare with the built repo) plus the
commit the load was pinned to, so a test can check that every worker ended on the same commit.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download

from .. import from_pretrained_with_prefetch, prefetch, prefetch_pipeline, protected_loads
from .fingerprints import tensor_fingerprint, tokenizer_fingerprint

__all__ = [
    "patched_plain_from_pretrained",
    "prefetch_only",
    "protected_from_pretrained",
    "protected_pipeline",
    "protected_tokenizer",
    "storm_loader",
    "storm_rewriter",
]


def _targets() -> Any:
    # Imported on first use: a prefetch-only worker should not pay for importing transformers.
    return importlib.import_module("hub_prefetch.testing.targets")


def _commit_of(model: Any) -> str | None:
    return getattr(getattr(model, "config", None), "_commit_hash", None)


def protected_from_pretrained(
    repo_id: str,
    subfolder: str = "",
    auto_class: str = "AutoModel",
    revision: str | None = None,
    prefetch_list: list[str] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """``from_pretrained_with_prefetch(<auto_class>.from_pretrained, repo_id, subfolder=...)``."""
    targets = _targets()
    cls = getattr(targets.transformers, auto_class)
    model = from_pretrained_with_prefetch(
        cls.from_pretrained,
        repo_id,
        subfolder=subfolder,
        prefetch_list=prefetch_list if prefetch_list is not None else [subfolder],
        revision=revision,
        **kwargs,
    )
    return {
        "fingerprint": tensor_fingerprint(model),
        "config": targets.config_summary(model.config),
        "class": type(model).__name__,
        "name_or_path": model.name_or_path,
        "commit": _commit_of(model),
    }


def protected_tokenizer(repo_id: str, subfolder: str = "", revision: str | None = None) -> dict[str, Any]:
    targets = _targets()
    tokenizer = from_pretrained_with_prefetch(
        targets.transformers.AutoTokenizer.from_pretrained,
        repo_id,
        subfolder=subfolder,
        prefetch_list=[subfolder],
        revision=revision,
    )
    return {
        "fingerprint": tokenizer_fingerprint(tokenizer),
        "input_ids": list(tokenizer(targets.SENTENCE)["input_ids"]),
    }


def patched_plain_from_pretrained(repo_id: str, subfolder: str = "", **kwargs: Any) -> dict[str, Any]:
    """The unmodified plain target, run under :func:`hub_prefetch.protected_loads`."""
    targets = _targets()
    with protected_loads():
        result: dict[str, Any] = targets.plain_from_pretrained(repo_id, subfolder=subfolder, **kwargs)
    return result


def prefetch_only(repo_id: str, subfolders: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Just :func:`hub_prefetch.prefetch`; the result as a dict."""
    return prefetch(repo_id, subfolders, **kwargs).to_dict()


def protected_pipeline(repo_id: str, revision: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """:func:`prefetch_pipeline`, then a commit-pinned offline ``DiffusionPipeline.from_pretrained``."""
    diffusers: Any = importlib.import_module("diffusers")
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    result = prefetch_pipeline(repo_id, revision=revision, variant=kwargs.get("variant"))
    pipe = diffusers.DiffusionPipeline.from_pretrained(
        repo_id, revision=result.commit, local_files_only=True, **kwargs
    )
    return {"fingerprints": _targets().pipeline_fingerprints(pipe), "commit": result.commit}


def storm_rewriter(
    repo_id: str, cache_dir: str, signal_dir: str, loaders: int, deadline_s: float = 60
) -> dict[str, Any]:
    """Re-resolve ``main`` the reference way (``snapshot_download`` on a branch) until the loaders are done.

    On huggingface_hub < 1.31 every call rewrites ``refs/main`` in place: the warm-cache storm.
    """
    done = Path(signal_dir)
    calls = 0
    stop = time.monotonic() + deadline_s
    while time.monotonic() < stop and len(list(done.glob("done.*"))) < loaders:
        snapshot_download(repo_id, cache_dir=cache_dir, allow_patterns=["*.json"])
        calls += 1
    return {"calls": calls}


def storm_loader(
    repo_id: str,
    *,
    subfolder: str,
    cache_dir: str,
    signal_dir: str,
    index: int,
    loads: int,
    mode: str = "plain",
) -> dict[str, Any]:
    """Load ``loads`` times from a warm cache (``plain`` or ``protected``); count what failed."""
    targets = _targets()
    cls = targets.transformers.AutoModel
    failures: list[str] = []
    fingerprints = set()
    try:
        for _ in range(loads):
            try:
                if mode == "protected":
                    model = from_pretrained_with_prefetch(
                        cls.from_pretrained,
                        repo_id,
                        subfolder=subfolder,
                        prefetch_list=[subfolder],
                        cache_dir=cache_dir,
                    )
                else:
                    model = cls.from_pretrained(repo_id, subfolder=subfolder, cache_dir=cache_dir)
                fingerprints.add(tensor_fingerprint(model))
            except Exception as exc:  # noqa: BLE001 - the failure is the measurement
                failures.append(f"{type(exc).__name__}: {exc}"[:300])
    finally:
        (Path(signal_dir) / f"done.{index}").touch()
    return {"failures": failures, "fingerprints": sorted(fingerprints)}
