"""Every change hub-prefetch makes to huggingface_hub at run time, in one place.

There is one: where ``flock`` raises (ENOLCK, EOPNOTSUPP, ...), huggingface_hub's per-blob lock raises
too (filelock falls back to a soft lock only on ENOSYS), and every download would fail. A process
that holds our repo lock there switches the per-blob lock off for itself: the repo lock already
excludes every other hub-prefetch writer of the repo, and huggingface_hub writes each blob to a temp
file and renames it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["blob_locks_replaced", "replace_blob_locks"]

logger = logging.getLogger("hub_prefetch.hfpatch")

_blob_locks_replaced = False
_guard = threading.Lock()


def blob_locks_replaced() -> bool:
    """Whether this process has switched huggingface_hub's per-blob locks off."""
    return _blob_locks_replaced


def replace_blob_locks() -> None:
    """Make huggingface_hub's per-blob lock a no-op in this process (idempotent, process-wide)."""
    global _blob_locks_replaced  # noqa: PLW0603 - one process-wide switch, set once
    with _guard:
        if _blob_locks_replaced:
            return
        import huggingface_hub.file_download as hf_file_download  # noqa: PLC0415 - patched module

        @contextlib.contextmanager
        def no_blob_lock(lock_file: Any, *, timeout: float | None = None) -> Iterator[None]:
            yield None

        setattr(hf_file_download, "WeakFileLock", no_blob_lock)  # noqa: B010 - not a public name
        _blob_locks_replaced = True
    logger.warning(
        "flock raises on this filesystem: huggingface_hub's per-blob locks are off in this process; "
        "the repo lease lock serialises downloads instead"
    )
