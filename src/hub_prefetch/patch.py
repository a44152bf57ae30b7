"""One-line opt-in for code bases with many ``from_pretrained`` call sites.

>>> import hub_prefetch
>>> with hub_prefetch.protected_loads():       # or hub_prefetch.install() / uninstall()
...     model = AutoModel.from_pretrained("org/model", subfolder="text_encoder")

Inside, every ``from_pretrained`` of transformers (models, auto classes, configs, tokenizers,
processors) and diffusers (models, schedulers, pipelines) goes through the protected path: a
verified prefetch, then a commit-pinned offline load, healed as in
:func:`~hub_prefetch.from_pretrained_with_prefetch`. Nested calls (an auto class calling the model
class) are protected once, at the outermost call. Patching is reversible and process-wide.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .besteffort import may_fall_back
from .heal import from_pretrained_with_prefetch
from .pipeline import prefetch_pipeline
from .prefetch import is_local_path

__all__ = ["install", "protected_loads", "uninstall"]

logger = logging.getLogger("hub_prefetch.patch")

_TARGETS = (
    ("transformers.modeling_utils", "PreTrainedModel"),
    ("transformers.models.auto.auto_factory", "_BaseAutoModelClass"),
    ("transformers.models.auto.configuration_auto", "AutoConfig"),
    ("transformers.models.auto.tokenization_auto", "AutoTokenizer"),
    ("transformers.models.auto.processing_auto", "AutoProcessor"),
    ("transformers.configuration_utils", "PretrainedConfig"),
    ("transformers.tokenization_utils_base", "PreTrainedTokenizerBase"),
    ("transformers.processing_utils", "ProcessorMixin"),
    ("diffusers.models.modeling_utils", "ModelMixin"),
    ("diffusers.schedulers.scheduling_utils", "SchedulerMixin"),
    ("diffusers.pipelines.pipeline_utils", "DiffusionPipeline"),
)
_PIPELINES = {"DiffusionPipeline"}
#: Loaders that read configs or tokenizer files only: their prefetch leaves the weights alone.
_NO_WEIGHTS = {
    "AutoConfig",
    "AutoTokenizer",
    "AutoProcessor",
    "PretrainedConfig",
    "PreTrainedTokenizerBase",
    "ProcessorMixin",
    "SchedulerMixin",
}

_state = threading.local()
_installed: dict[type, Any] = {}
_guard = threading.Lock()


@contextlib.contextmanager
def _outermost() -> Iterator[bool]:
    depth = getattr(_state, "depth", 0)
    _state.depth = depth + 1
    try:
        yield depth == 0
    finally:
        _state.depth = depth


def _wrap(original: Any, is_pipeline: bool, weights: bool) -> classmethod[Any, Any, Any]:
    func: Callable[..., Any] = original.__func__

    def from_pretrained(cls: type, pretrained: Any, *args: Any, **kwargs: Any) -> Any:
        with _outermost() as outermost:
            if not outermost or args or not isinstance(pretrained, str) or is_local_path(pretrained):
                return func(cls, pretrained, *args, **kwargs)
            if is_pipeline:
                if kwargs.get("local_files_only"):
                    return func(cls, pretrained, **kwargs)
                try:
                    result = prefetch_pipeline(
                        pretrained,
                        variant=kwargs.get("variant"),
                        revision=kwargs.get("revision"),
                        cache_dir=kwargs.get("cache_dir"),
                        token=kwargs.get("token"),
                    )
                except Exception as exc:
                    # As the model loaders do: the unpatched call shows its own error, or loads what
                    # the cache has (offline over a cache plain huggingface_hub filled).
                    if not may_fall_back(exc, what=pretrained, logger=logger, then="loading it unpatched"):
                        raise
                    return func(cls, pretrained, **kwargs)
                return func(
                    cls, pretrained, **{**kwargs, "revision": result.commit, "local_files_only": True}
                )
            subfolder = kwargs.pop("subfolder", None) or None
            return from_pretrained_with_prefetch(
                lambda model, **kw: func(cls, model, **kw),
                pretrained,
                subfolder=subfolder,
                prefetch_list=[subfolder or ""],
                prefetch_weights=weights,
                **kwargs,
            )

    from_pretrained.__doc__ = func.__doc__
    from_pretrained.__wrapped__ = func  # type: ignore[attr-defined]
    return classmethod(from_pretrained)


def install() -> list[str]:
    """Route transformers' and diffusers' ``from_pretrained`` through hub-prefetch; return what is patched."""
    patched = []
    with _guard:
        for module_name, class_name in _TARGETS:
            try:
                cls = getattr(importlib.import_module(module_name), class_name)
            except (ImportError, AttributeError):
                continue
            original = cls.__dict__.get("from_pretrained")
            if cls in _installed or not isinstance(original, classmethod):
                continue
            _installed[cls] = original
            cls.from_pretrained = _wrap(original, class_name in _PIPELINES, class_name not in _NO_WEIGHTS)
            patched.append(f"{module_name}.{class_name}")
    logger.debug("patched %s", patched)
    return patched


def uninstall() -> None:
    """Undo :func:`install`."""
    with _guard:
        for cls, original in _installed.items():
            setattr(cls, "from_pretrained", original)  # noqa: B010 - mypy cannot see the classmethod
        _installed.clear()


@contextlib.contextmanager
def protected_loads() -> Iterator[list[str]]:
    """``install()`` for the duration of a ``with`` block."""
    already = bool(_installed)
    patched = install()
    try:
        yield patched
    finally:
        if not already:
            uninstall()
