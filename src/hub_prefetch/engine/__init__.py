"""hub-prefetch's own download engine: under the repo lock, one listing becomes a verified snapshot.

* :mod:`.digest` — the file's sha256 or git blob id, computed while the bytes stream;
* :mod:`.parts` — a file cut into ranges, and the record that resumes them;
* :mod:`.job` — one file on its way: its partial file, ranges and following hash;
* :mod:`.http` — the body request for a range, through huggingface_hub's session and error mapping;
* :mod:`.progress` — bytes, rate and ETA for people;
* :mod:`.publish` — verified partial files into huggingface_hub's exact cache layout;
* :mod:`.run` — :class:`Engine`: connections, retries with resume, cancellation, fencing.
"""

from __future__ import annotations

from .digest import Digest, Verdict, complete_from_headers, etag_of
from .progress import observe
from .publish import partial_dir, partial_path, publish, safe_repo_path
from .run import Engine, Outcome

__all__ = [
    "Digest",
    "Engine",
    "Outcome",
    "Verdict",
    "complete_from_headers",
    "etag_of",
    "observe",
    "partial_dir",
    "partial_path",
    "publish",
    "safe_repo_path",
]
