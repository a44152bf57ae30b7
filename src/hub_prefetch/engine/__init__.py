"""hub-prefetch's own download engine: under the repo lock, one listing becomes a verified snapshot.

* :mod:`.digest` — the file's sha256 or git blob id, computed while the bytes stream;
* :mod:`.publish` — verified partial files into huggingface_hub's exact cache layout;
"""

from __future__ import annotations

from .digest import Digest, Verdict, complete_from_headers, etag_of
from .publish import partial_dir, partial_path, publish, safe_repo_path

__all__ = [
    "Digest",
    "Verdict",
    "complete_from_headers",
    "etag_of",
    "partial_dir",
    "partial_path",
    "publish",
    "safe_repo_path",
]
