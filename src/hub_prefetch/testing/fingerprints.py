"""Fingerprints that tell exactly which weights or vocabulary a loader got: what
:attr:`~hub_prefetch.testing.repos.BuiltRepo.fingerprint` holds and what a worker target returns.

torch is imported on first use, so importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from typing import Any

__all__ = ["tensor_fingerprint", "tokenizer_fingerprint"]


def tensor_fingerprint(model_or_state_dict: Any) -> str:
    """sha256 over the sorted ``(name, dtype, shape, bytes)`` of a state dict or a module's state dict."""
    state = (
        model_or_state_dict.state_dict()
        if hasattr(model_or_state_dict, "state_dict")
        else model_or_state_dict
    )
    torch: Any = importlib.import_module("torch")

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 over a tokenizer's sorted vocabulary (what it maps each token to)."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()
