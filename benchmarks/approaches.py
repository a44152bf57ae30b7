"""The three ways a worker loads the model, as the benchmark runs them in each worker process.

* ``plain``: ``AutoModel.from_pretrained(repo, subfolder=...)``, what users write.
* ``reference``: the reference approach: a blocking ``fcntl.flock`` on one lock file per repo id (in a
  folder under ``HF_HOME``) around ``snapshot_download(allow_patterns=[sub/*, sub/**, *.json, *.txt])``,
  then the same plain ``from_pretrained`` (unlocked, by branch name).
* ``hub-prefetch``: ``hub_prefetch.from_pretrained_with_prefetch(AutoModel.from_pretrained, repo,
  subfolder=...)``: a verified prefetch under the repo lock, then a commit-pinned offline load.

``flock`` is always looked up as ``fcntl.flock`` at call time here, as in filelock and hub_prefetch, so
:func:`disable_flock` (the "locks that do nothing" axis) reaches every lock in the process.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any

APPROACHES = ("plain", "reference", "hub-prefetch")

#: ``time.time()`` when this worker had its files and started the load proper (reference and hub-prefetch;
#: plain from_pretrained fetches and loads in one call). Lets the report split coordination from CPU.
marks: dict[str, float] = {}


def disable_flock() -> None:
    """Make ``fcntl.flock`` succeed without locking anything, as on some network filesystems."""

    def flock(fd: Any, operation: int) -> None:
        return None

    fcntl.flock = flock


def _auto_model() -> Any:
    import transformers

    return transformers.AutoModel


def load_plain(repo_id: str, subfolder: str, cache_dir: str) -> Any:
    return _auto_model().from_pretrained(repo_id, subfolder=subfolder, cache_dir=cache_dir)


def _reference_lock_path(repo_id: str) -> Path:
    # The reference keys its lock on the repo id alone, in a folder under HF_HOME.
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    folder = home / "hub_prefetch_locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / (repo_id.replace("/", "--") + ".lock")


def load_reference(repo_id: str, subfolder: str, cache_dir: str) -> Any:
    from huggingface_hub import snapshot_download

    patterns = [f"{subfolder}/*", f"{subfolder}/**", "*.json", "*.txt"]
    fd = os.open(_reference_lock_path(repo_id), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            snapshot_download(repo_id, allow_patterns=patterns, cache_dir=cache_dir)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    marks["fetched"] = time.time()
    return load_plain(repo_id, subfolder, cache_dir)


def load_hub_prefetch(repo_id: str, subfolder: str, cache_dir: str) -> Any:
    import hub_prefetch

    factory = _auto_model().from_pretrained

    def timed_factory(*args: Any, **kwargs: Any) -> Any:
        marks.setdefault("fetched", time.time())  # first call: the verified prefetch is done
        return factory(*args, **kwargs)

    return hub_prefetch.from_pretrained_with_prefetch(
        timed_factory, repo_id, subfolder=subfolder, cache_dir=cache_dir
    )


LOADERS = {"plain": load_plain, "reference": load_reference, "hub-prefetch": load_hub_prefetch}


def load(approach: str, repo_id: str, subfolder: str, cache_dir: str) -> Any:
    return LOADERS[approach](repo_id, subfolder, cache_dir)


def preload() -> dict[str, str]:
    """Import everything a load touches, so a worker's clock starts at its call, not at its imports."""
    import huggingface_hub
    import torch
    import transformers
    from transformers import BertModel  # the lazy module resolves the class on first access

    import hub_prefetch
    import hub_prefetch.lock

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    del BertModel
    return {
        "python": ".".join(map(str, __import__("sys").version_info[:3])),
        "huggingface_hub": huggingface_hub.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "hub_prefetch": hub_prefetch.__version__,
    }
