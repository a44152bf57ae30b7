"""How long a temp file has been seen unchanged, judged on this host's clock only.

Where kernel locks cannot be trusted, a temp file in ``blobs/`` is an orphan only if nobody is still
writing it. Its mtime was set by the writer's host (or the NFS server): comparing it with our
``time.time()`` lets clock skew delete a live writer's file, or keep a dead one forever. Instead we
record each sighting, ``(size, mtime_ns, inode)`` as we saw it and *this host's* monotonic time then,
in a small side record of the repo; a file is quiet for as long as later looks see the same triple.
A live writer changes size or mtime at every chunk and so is never quiet for long, whatever the clocks
say. Monotonic times are compared only with times of the same boot of the same host (the boot id keys
the record); another host's sightings are kept, never read.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from . import cache
from .lock.identity import HostIdentity

__all__ = ["Sightings"]

_FORMAT = 1


class Sightings:
    """The sightings of one repo's temp files by this host's boot; :meth:`save` writes them back."""

    def __init__(self, path: Path, *, boot: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self.boot, self.clock = path, boot, clock
        data = cache.read_json(path, version=_FORMAT) or {}
        boots = data.get("boots")
        self._boots: dict[str, dict[str, list[int | float]]] = (
            {k: v for k, v in boots.items() if isinstance(v, dict)} if isinstance(boots, dict) else {}
        )
        self._mine = self._boots.setdefault(boot, {})
        self._changed = False

    @classmethod
    def of_repo(
        cls, cache_dir: Path, repo_type: str, repo_id: str, *, clock: Callable[[], float] = time.monotonic
    ) -> Sightings:
        me = HostIdentity.local()
        boot = me.boot_id or f"host:{me.host}"
        path = cache.repo_folder(cache_dir, repo_type, repo_id) / ".hub_prefetch" / "temp-sightings.json"
        return cls(path, boot=boot, clock=clock)

    def quiet_for(self, temp: Path) -> float | None:
        """Seconds this host has seen ``temp`` unchanged (0 at a first or changed sighting); None if gone."""
        try:
            st = os.lstat(temp)
        except OSError:
            return None
        seen = [st.st_size, st.st_mtime_ns, st.st_ino]
        now = self.clock()
        entry = self._mine.get(temp.name)
        if isinstance(entry, list) and len(entry) == 4 and entry[:3] == seen:
            elapsed = now - float(entry[3])
            if elapsed >= 0:  # negative: a monotonic clock of another boot that reused the key
                return elapsed
        self._mine[temp.name] = [*seen, now]
        self._changed = True
        return 0.0

    def save(self, present: Iterable[str]) -> None:
        """Write the record back, forgetting temp files that are gone (best effort: a cache we cannot
        write only makes the next look a first sighting again)."""
        keep = set(present)
        for entries in self._boots.values():
            for name in [n for n in entries if n not in keep]:
                del entries[name]
                self._changed = True
        boots = {b: e for b, e in self._boots.items() if e}
        if not self._changed:
            return
        try:
            if boots:
                cache.atomic_write_json(self.path, {"version": _FORMAT, "boots": boots})
            else:
                self.path.unlink(missing_ok=True)
        except OSError:
            pass
