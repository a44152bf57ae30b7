"""Ready-made worker targets: the plain loaders users run, reporting what they really loaded.

Each returns a JSON-serialisable dict with a fingerprint to compare with
:attr:`hub_prefetch.testing.repos.BuiltRepo.fingerprint`. torch and transformers are imported with this
module, so a worker pays the import before READY, not after GO; diffusers is imported on first use
(pass ``preload=("diffusers",)`` to the pool to move it before READY too).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .fingerprints import tensor_fingerprint, tokenizer_fingerprint

__all__ = [
    "SENTENCE",
    "config_summary",
    "pipeline_fingerprints",
    "plain_from_pretrained",
    "plain_model",
    "plain_pipeline",
    "plain_tokenizer",
]

# Typed Any on purpose: the libraries' partial annotations add nothing to a test target.
transformers: Any = importlib.import_module("transformers")
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

#: What :func:`plain_tokenizer` encodes.
SENTENCE = "the quick brown fox jumps over the lazy dog"


def config_summary(config: Any) -> dict[str, Any]:
    """The scalar entries of a config (transformers ``PretrainedConfig`` or diffusers ``FrozenDict``)."""
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: v for k, v in raw.items() if isinstance(v, (str, int, float, bool)) or v is None}


def plain_from_pretrained(
    repo_id: str,
    subfolder: str = "",
    auto_class: str = "AutoModel",
    revision: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """``transformers.<auto_class>.from_pretrained(repo_id, subfolder=..., revision=...)``."""
    cls = getattr(transformers, auto_class)
    model = cls.from_pretrained(repo_id, subfolder=subfolder, revision=revision, **kwargs)
    return {
        "fingerprint": tensor_fingerprint(model),
        "config": config_summary(model.config),
        "class": type(model).__name__,
        "dtype": str(next(model.parameters()).dtype),
    }


def plain_model(
    repo_id: str,
    subfolder: str = "",
    model_class: str = "UNet2DConditionModel",
    revision: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """``diffusers.<model_class>.from_pretrained(repo_id, subfolder=..., revision=...)``."""
    diffusers: Any = importlib.import_module("diffusers")

    diffusers.utils.logging.set_verbosity_error()
    cls = getattr(diffusers, model_class)
    model = cls.from_pretrained(repo_id, subfolder=subfolder, revision=revision, **kwargs)
    return {"fingerprint": tensor_fingerprint(model), "config": config_summary(model.config)}


def plain_tokenizer(
    repo_id: str, subfolder: str = "", revision: str | None = None, **kwargs: Any
) -> dict[str, Any]:
    """``transformers.AutoTokenizer.from_pretrained(...)``, then encode :data:`SENTENCE`."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        repo_id, subfolder=subfolder, revision=revision, **kwargs
    )
    return {
        "fingerprint": tokenizer_fingerprint(tokenizer),
        "class": type(tokenizer).__name__,
        "input_ids": list(tokenizer(SENTENCE)["input_ids"]),
    }


def plain_pipeline(repo_id: str, revision: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """``diffusers.DiffusionPipeline.from_pretrained(...)``; fingerprints of every component."""
    diffusers: Any = importlib.import_module("diffusers")

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    pipe = diffusers.DiffusionPipeline.from_pretrained(repo_id, revision=revision, **kwargs)
    return {"class": type(pipe).__name__, "fingerprints": pipeline_fingerprints(pipe)}


def pipeline_fingerprints(pipe: Any) -> dict[str, str | None]:
    """Per component: tensors, vocabulary, or the class name of what has neither (a scheduler)."""
    fingerprints: dict[str, str | None] = {}
    for name, component in pipe.components.items():
        if component is None:
            fingerprints[name] = None
        elif hasattr(component, "state_dict"):
            fingerprints[name] = tensor_fingerprint(component)
        elif hasattr(component, "get_vocab"):
            fingerprints[name] = tokenizer_fingerprint(component)
        else:
            fingerprints[name] = type(component).__name__
    return fingerprints
