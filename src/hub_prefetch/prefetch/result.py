"""What a prefetch hands back: the commit and snapshot to load, and what it cost."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["PrefetchResult"]


@dataclass(frozen=True)
class PrefetchResult:
    """Prepared: load ``snapshot_path``, or ``revision=commit`` with ``local_files_only``."""

    repo_id: str
    repo_type: str
    revision: str
    commit: str
    snapshot_path: str
    files: tuple[str, ...]
    bytes_total: int
    bytes_downloaded: int = 0
    downloaded: tuple[str, ...] = ()
    repaired: tuple[str, ...] = ()
    warm: bool = False
    waited_s: float = 0.0
    elapsed_s: float = 0.0
    #: files the Hub (or a mirror) gave no digest for: their size was checked, never their content
    unchecked: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain data (what ``hub-prefetch warm --json`` prints)."""
        return asdict(self)
