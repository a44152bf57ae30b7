"""Uncontended cost of one RepoLock acquire + release, in microseconds, per backend.

    python benchmarks/lock_cost.py [--n 3000] [--dir PATH]

The lock folder is a fresh temporary folder (or ``--dir``), so the figure includes the syscalls of the
filesystem it lives on. Warm-path loads take no lock at all; this is the cost of a cold or re-checking
load's critical section bracket.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from hub_prefetch.lock import RepoLock


def measure(folder: Path, backend: str, n: int, rounds: int = 5) -> tuple[float, float]:
    """(median, best) microseconds per acquire+release over ``rounds`` rounds of ``n``."""
    lock = RepoLock(folder, "bench/model", backend=backend)  # type: ignore[arg-type]
    for _ in range(50):  # warm up: probe, lock folder, first file creation
        lock.acquire()
        lock.release()
    per_round = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            lock.acquire()
            lock.release()
        per_round.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(per_round), min(per_round)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for backend in ("flock", "lease"):
            median, best = measure(Path(tmp), backend, args.n)
            print(
                f"{backend:6s} {median:8.1f} µs per acquire+release (median of 5 x {args.n}; best {best:.1f})"
            )


if __name__ == "__main__":
    main()
