"""diffusers-aware prefetch: the components ``model_index.json`` names, in one commit."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from . import errors
from .prefetch import PrefetchResult, Request, run
from .settings import Settings

__all__ = ["pipeline_components", "prefetch_pipeline"]


def pipeline_components(model_index: dict[str, Any]) -> list[str]:
    """Subfolders that hold a loadable component: entries ``name: [library, class]`` with both set."""
    out = []
    for name, value in model_index.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2:
            continue
        if value[0] is not None and value[1] is not None:
            out.append(name)
    return sorted(out)


def prefetch_pipeline(
    model: str,
    components: Iterable[str] | None = None,
    *,
    skip: Iterable[str] = (),
    variant: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool | None = None,
    deep: bool | None = None,
    settings: Settings | None = None,
    lock_timeout: float | None = None,
) -> PrefetchResult:
    """Prefetch and verify what ``DiffusionPipeline.from_pretrained(model)`` reads.

    ``components`` limits the subfolders (default: every component of ``model_index.json``);
    ``skip`` names components the caller passes in itself, which are not fetched.
    """
    root_req = Request.build(
        model,
        [],
        revision=revision,
        token=token,
        cache_dir=cache_dir,
        settings=settings,
        lock_timeout=lock_timeout,
    )
    root = run(root_req, local_files_only=bool(local_files_only), deep=deep)
    try:
        with open(os.path.join(root.snapshot_path, "model_index.json"), encoding="utf-8") as fh:
            model_index = json.load(fh)
    except FileNotFoundError as exc:
        raise errors.InvalidRequestError(
            f"{model} has no model_index.json: not a diffusers pipeline"
        ) from exc
    except ValueError as exc:
        raise errors.CorruptRepoFileError(f"{model}: model_index.json is not valid JSON: {exc}") from exc
    if not isinstance(model_index, dict):
        raise errors.CorruptRepoFileError(f"{model}: model_index.json is not a JSON object")
    available = pipeline_components(model_index)
    wanted = list(components) if components is not None else available
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise errors.UnknownSubfolderError(
            f"{model} has no pipeline component(s) {', '.join(unknown)}; it has {', '.join(available)}",
            subfolders=unknown,
        )
    skipped = set(skip)
    return run(
        Request.build(
            model,
            [c for c in wanted if c not in skipped],
            revision=root.commit,
            variant=variant,
            token=token,
            settings=root_req.settings,
        ),
        local_files_only=bool(local_files_only),
        deep=deep,
    )
