"""One validated prefetch request, and the keyword options every entry point shares.

The public entry points (:func:`~hub_prefetch.prefetch`, :func:`~hub_prefetch.verify`,
:func:`~hub_prefetch.repair`, :func:`~hub_prefetch.prefetch_distributed`, ...) keep explicit keyword
signatures for editors and ``help()``; inside, the options travel as one :class:`RequestOptions`
typed dict into :meth:`Request.build`, so validation and the settings fold happen in one place.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from .. import cache, errors
from ..settings import Settings

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Request", "RequestOptions", "resolve_settings"]


class RequestOptions(TypedDict, total=False):
    """The options of a request, as the entry points take them (all optional)."""

    revision: str | None
    """Branch, tag or commit; ``main`` when None."""
    repo_type: str | None
    """``model`` (default), ``dataset`` or ``space``."""
    variant: str | None
    """A weights variant such as ``fp16`` (plain files where the folder lacks it)."""
    all_files: bool
    """Every file under the subfolders, not only what ``from_pretrained`` reads."""
    include_root_metadata: bool
    """Also the repo root's ``*.json`` (``model_index.json``, root configs); default True."""
    cache_dir: str | os.PathLike[str] | None
    """The hub cache; default from ``HF_HUB_CACHE`` / ``HF_HOME``."""
    token: str | bool | None
    """A Hub token, as huggingface_hub takes it."""
    settings: Settings | None
    """Settings to use instead of reading the environment now; the options above still win."""
    lock_timeout: float | None
    """Seconds to wait for the repo lock, then :class:`~hub_prefetch.errors.LockTimeout`."""
    weights: bool
    """False: configs and tokenizer files only (loaders of configs, tokenizers, schedulers)."""


def resolve_settings(settings: Settings | None, **overrides: Any) -> Settings:
    """``settings`` (or the environment now) with the overrides that are not None applied."""
    if settings is None:
        return Settings.from_env(**overrides)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "cache_dir" in changes:
        changes["cache_dir"] = Path(changes["cache_dir"]).expanduser()
    return settings.replace(**changes) if changes else settings


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
        cls, model: str, subfolders: Iterable[str] | str | None, **options: Unpack[RequestOptions]
    ) -> Request:
        """Validate ``model``, ``subfolders`` and the options; raise :class:`InvalidRequestError`."""
        repo_type = options.get("repo_type") or "model"
        if repo_type not in cache.REPO_TYPES:
            raise errors.InvalidRequestError(
                f"repo type must be one of {cache.REPO_TYPES}, not {repo_type!r}"
            )
        if isinstance(subfolders, str):
            subfolders = [subfolders]
        wanted = subfolders if subfolders is not None else [""]
        subs = tuple(dict.fromkeys(cache.normalize_subfolder(s) for s in wanted))
        variant = options.get("variant")
        if variant is not None and (not variant or "/" in variant or "." in variant):
            raise errors.InvalidRequestError(f"invalid variant {variant!r}")
        settings = resolve_settings(
            options.get("settings"),
            cache_dir=options.get("cache_dir"),
            lock_timeout=options.get("lock_timeout"),
        )
        return cls(
            repo_id=cache.validate_repo_id(model),
            repo_type=repo_type,
            revision=cache.validate_revision(options.get("revision") or "main"),
            subfolders=subs,
            variant=variant,
            all_files=options.get("all_files", False),
            include_root_metadata=options.get("include_root_metadata", True),
            token=options.get("token"),
            settings=settings,
            weights=options.get("weights", True),
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
