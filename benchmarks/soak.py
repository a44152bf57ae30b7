"""Soak: many rounds of many real loaders through hub-prefetch, each round under a random fault from the
fault matrix (``make soak`` = ``python -m benchmarks.soak``; not part of ``make test``).

Each round gives ``--workers`` reused worker processes a cache (fresh, or warmed and then damaged), injects
one fault (in the local Hub, in the cache, in ``flock``, or by killing the downloader), lets them load the
tiny sharded BERT with :func:`hub_prefetch.from_pretrained_with_prefetch`, and checks every outcome against
what that fault allows: only unrecoverable faults (the SIGKILLed worker itself, a full disk, a Hub that never
recovers, offline with a partial cache) may fail a load, and they must fail with the error they call for.

The summary: loads ok, loads failed (expected / unexpected), wrong tensors, temp files left, bytes served /
bytes needed, and a line per fault kind. Exit status 1 if anything unexpected happened.

    python -m benchmarks.soak --rounds 200 --workers 8 --seed 1 --budget 840
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ID = "soak/sharded-bert"
SUB = "text_encoder"
TARGET = "tests.support.fault_targets:dispatch"
#: Short, so the lease's stale-temp rule (older than a TTL) is seen within a round; long enough that 8 busy
#: workers on 2 cores still heartbeat in time.
LEASE_TTL = 3.0
PRELOAD = ("hub_prefetch.testing.targets", "hub_prefetch.testing.protected_targets")

#: fault kind -> relative weight. Recoverable ones dominate; each unrecoverable one appears now and then.
FAULTS: dict[str, float] = {
    "none": 2,
    "http-5xx": 3,
    "http-429": 2,
    "drop-mid-body": 3,
    "stall-mid-body": 2,
    "corrupt-served": 2,
    "killed-downloader": 2,
    "killed-downloader-lease": 1,
    "cache-flipped-byte": 2,
    "cache-truncated": 2,
    "cache-dangling": 2,
    "cache-config-missing": 2,
    "cache-orphan-temp": 2,
    "flock-noop": 2,
    "flock-enosys": 1,
    "read-only-warm": 1,
    "offline-warm": 1,
    "symlinks-disabled": 1,
    # unrecoverable: loads must fail, fast and typed (or with the loader's own error)
    "offline-partial": 1,
    "hub-down": 1,
    "disk-full": 1,
}


@dataclass
class Round:
    index: int
    fault: str
    cache: Path
    kwargs: dict[str, Any] = field(default_factory=dict)
    needed_bytes: int = 0
    expect_fail: int = 0  # loads that must fail (-1: all)
    killed: int | None = None
    zero_requests: bool = False
    zero_writes: dict[str, tuple[int, int, int]] | None = None
    cleanup: list[Callable[[], None]] = field(default_factory=list)


@dataclass
class Tally:
    ok: int = 0
    failed_expected: int = 0
    failed_unexpected: int = 0
    wrong: int = 0
    temps_left: int = 0
    served: int = 0
    needed: int = 0
    served_unrecoverable: int = 0
    temps_after_failure: int = 0
    rounds: int = 0
    problems: list[str] = field(default_factory=list)
    per_fault: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )


def _run(*cmd: str) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _unmount(path: Path) -> None:
    _run("umount", "-l", str(path))


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_mtime_ns, st.st_size, st.st_mode)
    return out


def _temps(cache: Path) -> list[Path]:
    if not cache.exists():
        return []
    return [p for p in cache.rglob("*") if p.name.endswith((".incomplete", ".tmp"))]


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.tally = Tally()
        self.can_mount = os.geteuid() == 0 and self._probe_mount()
        from hub_prefetch.testing import LocalHub
        from hub_prefetch.testing.repos import build_sharded_model
        from hub_prefetch.testing.store import RepoStore

        self.store = RepoStore(work / "store")
        self.built = build_sharded_model(self.store, REPO_ID, subfolder=SUB, shards=3)
        self.hub = LocalHub(self.store).start()
        os.environ["HF_ENDPOINT"] = self.hub.url  # for the warm-ups done in this process
        from hub_prefetch.select import select_files

        listing = self.store.files(REPO_ID, self.built.commit)
        selection = select_files(
            listing, [SUB], load_index=lambda p: self.store.read(REPO_ID, self.built.commit, p)
        )
        self.needed = {p: listing[p].size for p in selection.files}
        self.shards = sorted(p for p in self.needed if p.endswith(".safetensors"))
        self.pool: Any = None

    def _probe_mount(self) -> bool:
        probe = Path(tempfile.mkdtemp(prefix="soak-mount-probe-"))
        ok = _run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe))
        if ok:
            _run("umount", "-l", str(probe))
        probe.rmdir()
        return ok

    # -------------------------------------------------------------------------------- the worker pool
    def env(self) -> dict[str, str | None]:
        from hub_prefetch.testing.pytest_plugin import quiet_env

        env: dict[str, str | None] = dict(quiet_env())
        home = self.work / "home"
        env.update(
            {
                "HF_HOME": str(home),
                "HF_HUB_CACHE": str(home / "hub"),
                "HF_ENDPOINT": self.hub.url,
                "HF_TOKEN": None,
                "HF_HUB_OFFLINE": None,
                "TRANSFORMERS_OFFLINE": None,
                "HF_HUB_DOWNLOAD_TIMEOUT": "2",
                "HUB_PREFETCH_BACKOFF": "0.05",
                "HUB_PREFETCH_BACKOFF_MAX": "0.5",
                "HUB_PREFETCH_LEASE_TTL": str(LEASE_TTL),
            }
        )
        return env

    def fresh_pool(self) -> Any:
        from hub_prefetch.testing.workers import WorkerPool

        self.close_pool()
        pool = WorkerPool(
            TARGET, {"action": "noop"}, n=self.args.workers, env=self.env(), timeout=180, preload=PRELOAD
        )
        pool.start()
        pool.wait_ready()
        pool.go()
        results = pool.round_results()
        if not all(r.ok for r in results):
            raise RuntimeError(f"workers did not start: {[(r.error_type, r.stderr[-500:]) for r in results]}")
        self.pool = pool
        return pool

    def close_pool(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    # -------------------------------------------------------------------------------- preparing a round
    def load_kwargs(self, cache: Path, **extra: Any) -> dict[str, Any]:
        return {"action": "load", "repo_id": REPO_ID, "subfolder": SUB, "cache_dir": str(cache), **extra}

    def warm(self, cache: Path) -> Path:
        import hub_prefetch

        return Path(hub_prefetch.prefetch(REPO_ID, [SUB], cache_dir=cache).snapshot_path)

    def etag(self, path: str) -> str:
        f = self.store.files(REPO_ID, self.built.commit)[path]
        return f.sha256 if f.is_lfs else f.git_sha1

    def prepare(self, index: int, fault: str) -> Round:
        rng, hub = self.rng, self.hub
        cache = self.work / "caches" / f"{index:04d}"
        rnd = Round(index, fault, cache, self.load_kwargs(cache), needed_bytes=sum(self.needed.values()))
        shard = rng.choice(self.shards)
        glob = f"*/resolve/*/{shard}"
        if fault == "http-5xx":
            hub.fail(glob, method="GET", status=rng.choice([500, 502, 503, 504]), count=rng.randint(1, 3))
        elif fault == "http-429":
            hub.fail(glob, method="GET", status=429, count=1, retry_after=0.5)
        elif fault == "drop-mid-body":
            hub.drop_after(glob, rng.randrange(1, self.needed[shard]), count=rng.randint(1, 2))
        elif fault == "stall-mid-body":
            hub.stall(glob, after_bytes=rng.randrange(0, self.needed[shard]), count=1)
        elif fault == "corrupt-served":
            hub.corrupt(glob, mode="flip", count=1)
            rnd.kwargs["env"] = {"HUB_PREFETCH_DEEP_VERIFY": "1"}
        elif fault.startswith("killed-downloader"):
            rnd.kwargs["shard"] = shard
            rnd.kwargs["cut"] = rng.randrange(1, self.needed[shard])
            if fault.endswith("lease"):
                rnd.kwargs["env"] = {"HUB_PREFETCH_LOCK": "lease"}
            rnd.expect_fail = 1
        elif fault.startswith("cache-"):
            snapshot = self.warm(cache)
            target = snapshot / shard
            blob = target.resolve()
            rnd.needed_bytes = self.needed[shard]
            if fault == "cache-flipped-byte":
                data = bytearray(blob.read_bytes())
                data[rng.randrange(len(data) - 1000, len(data))] ^= 0xFF
                blob.write_bytes(bytes(data))
                rnd.kwargs["env"] = {"HUB_PREFETCH_DEEP_VERIFY": "1"}
            elif fault == "cache-truncated":
                os.truncate(blob, rng.randrange(0, blob.stat().st_size))
            elif fault == "cache-dangling":
                blob.unlink()
            elif fault == "cache-config-missing":
                (snapshot / SUB / "config.json").unlink()
                rnd.needed_bytes = 0
            elif fault == "cache-orphan-temp":
                blob.unlink()
                orphan = blob.parent / f"{self.etag(shard)}.{rng.randrange(16**8):08x}.incomplete"
                orphan.write_bytes(os.urandom(rng.randrange(1, 4096)))
        elif fault in ("flock-noop", "flock-enosys"):
            rnd.kwargs["flock"] = "noop" if fault == "flock-noop" else "ENOSYS"
        elif fault == "symlinks-disabled":
            rnd.kwargs["env"] = {"HF_HUB_DISABLE_SYMLINKS": "1"}
        elif fault == "offline-warm":
            self.warm(cache)
            rnd.kwargs["env"] = {"HF_HUB_OFFLINE": "1"}
            rnd.needed_bytes, rnd.zero_requests = 0, True
        elif fault == "offline-partial":
            snapshot = self.warm(cache)
            (snapshot / shard).resolve().unlink()
            rnd.kwargs["env"] = {"HF_HUB_OFFLINE": "1"}
            rnd.needed_bytes, rnd.zero_requests, rnd.expect_fail = 0, True, -1
        elif fault == "read-only-warm":
            self.warm(cache)
            rnd.needed_bytes, rnd.zero_requests = 0, True
            rnd.zero_writes = _tree(cache)
            if self.can_mount and _run("mount", "--bind", str(cache), str(cache)):
                _run("mount", "-o", "remount,ro,bind", str(cache))
                rnd.cleanup.append(functools.partial(_unmount, cache))
        elif fault == "hub-down":
            hub.fail(glob, method="GET", status=503, count=-1)
            rnd.expect_fail = -1
        elif fault == "disk-full":
            cache.mkdir(parents=True)
            if self.can_mount and _run("mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(cache)):
                rnd.cleanup.append(functools.partial(_unmount, cache))
                rnd.expect_fail = -1
            else:
                rnd.fault = "none"  # cannot make a small disk here: an ordinary round instead
        self.hub.reset_log()
        return rnd

    # -------------------------------------------------------------------------------- running a round
    def run_round(self, rnd: Round) -> list[Any]:
        pool = self.pool or self.fresh_pool()
        kwargs = dict(rnd.kwargs)
        shard, cut = kwargs.pop("shard", None), kwargs.pop("cut", None)
        pool.next_round(kwargs)
        pool.wait_ready()
        victim = [] if shard is None else self.killed_downloader(rnd, kwargs, shard, cut)
        pool.go()
        results = pool.round_results(timeout=150)
        if any(r.error_type in ("Killed", "Timeout", "Crashed") for r in results):
            self.close_pool()  # a dead worker cannot take another round
        return victim + results

    def killed_downloader(self, rnd: Round, kwargs: dict[str, Any], shard: str, cut: int) -> list[Any]:
        """One more process starts the load alone, is parked at byte ``cut`` of ``shard`` while it holds
        the repo lock, and is SIGKILLed there; the pool's workers are the survivors."""
        from hub_prefetch.testing.workers import WorkerPool

        stall = self.hub.stall(f"*/resolve/*/{shard}", after_bytes=cut)
        with WorkerPool(TARGET, kwargs, n=1, env=self.env(), timeout=120, preload=PRELOAD) as victim:
            victim.wait_ready()
            victim.go()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                parked = [r for r in self.hub.requests() if r.filename == shard and r.fault == "stall"]
                if parked and parked[0].bytes_sent >= cut:
                    victim.kill(0)
                    rnd.killed = 0
                    break
                time.sleep(0.01)
            results = victim.results(timeout=60)
        self.hub.clear_fault(stall)
        if rnd.fault.endswith("lease"):
            # Where flock is not trusted, a temp file is an orphan only once untouched for a lease TTL.
            time.sleep(LEASE_TTL + 0.1)
        return results

    def check(self, rnd: Round, results: list[Any]) -> None:
        t = self.tally
        fails = [r for r in results if not r.ok]
        oks = [r for r in results if r.ok]
        t.ok += len(oks)
        wrong = [r for r in oks if r.value.get("fingerprint") != self.built.fingerprint]
        t.wrong += len(wrong)
        expected = len(results) if rnd.expect_fail == -1 else rnd.expect_fail
        if rnd.killed is None and rnd.fault.startswith("killed"):
            expected = 0  # the downloader could not be caught mid-shard: everybody must load
        allowed = {
            "killed-downloader": {"Killed"},
            "killed-downloader-lease": {"Killed"},
            "disk-full": {"CacheWriteError", "OSError", "FileNotFoundError"},
            "hub-down": {"HubUnavailableError", "OSError", "HfHubHTTPError", "HTTPError"},
            "offline-partial": {"OfflineCacheMissError", "OSError", "LocalEntryNotFoundError"},
        }.get(rnd.fault, set())
        bad = [r for r in fails if r.error_type not in allowed]
        if len(fails) > expected or bad or (rnd.expect_fail == -1 and oks):
            t.failed_unexpected += len(bad) + max(0, len(fails) - len(bad) - expected)
            t.problems.append(
                f"round {rnd.index} ({rnd.fault}): {len(fails)} failed, {expected} allowed; "
                + "; ".join(f"{r.error_type}: {(r.error or '')[:160]}" for r in fails[:3])
            )
        t.failed_expected += len(fails) - len(bad) - max(0, len(fails) - len(bad) - expected)
        if wrong:
            t.problems.append(f"round {rnd.index} ({rnd.fault}): {len(wrong)} wrong tensors")
        served = self.hub.bytes_served()
        if rnd.expect_fail == -1:
            t.served_unrecoverable += served  # failing attempts and the loaders' own fallbacks
        else:
            t.served += served
            t.needed += rnd.needed_bytes
        if rnd.zero_requests and self.hub.requests():
            t.problems.append(f"round {rnd.index} ({rnd.fault}): {len(self.hub.requests())} Hub requests")
        if rnd.zero_writes is not None and _tree(rnd.cache) != rnd.zero_writes:
            t.problems.append(f"round {rnd.index} ({rnd.fault}): the read-only cache was written")
        temps = _temps(rnd.cache)
        if rnd.expect_fail == -1 and temps:
            # huggingface_hub 1.x keeps `<etag>.incomplete` of a failed download (for resuming): the loaders'
            # own plain fallback leaves them. Nothing may be lost: the next run with the fault gone removes
            # them and loads.
            t.temps_after_failure += len(temps)
            temps = self.recover(rnd)
        t.temps_left += len(temps)
        if temps:
            t.problems.append(f"round {rnd.index} ({rnd.fault}): temp files left: {[p.name for p in temps]}")
        row = t.per_fault[rnd.fault]
        row["rounds"] += 1
        row["ok"] += len(oks)
        row["failed"] += len(fails)
        row["served"] += served
        row["needed"] += rnd.needed_bytes if rnd.expect_fail != -1 else 0
        for r in fails:
            row[f"error {r.error_type}"] += 1
        t.rounds += 1

    def recover(self, rnd: Round) -> list[Path]:
        import hub_prefetch

        self.hub.clear_faults()
        if rnd.fault == "disk-full":
            _run("mount", "-o", "remount,size=64m", str(rnd.cache))
        try:
            hub_prefetch.prefetch(REPO_ID, [SUB], cache_dir=rnd.cache)
        except Exception as exc:
            self.tally.problems.append(f"round {rnd.index} ({rnd.fault}): no recovery: {exc!r}"[:300])
        return _temps(rnd.cache)

    # -------------------------------------------------------------------------------- the whole soak
    def run(self) -> Tally:
        kinds, weights = zip(*FAULTS.items(), strict=True)
        t0 = time.monotonic()
        for index in range(self.args.rounds):
            if time.monotonic() - t0 > self.args.budget:
                print(
                    f"time budget of {self.args.budget:.0f} s reached after {index} rounds", file=sys.stderr
                )
                break
            fault = self.rng.choices(kinds, weights)[0]
            rnd = self.prepare(index, fault)
            try:
                results = self.run_round(rnd)
                self.check(rnd, results)
            finally:
                self.hub.clear_faults()
                for fn in rnd.cleanup:
                    fn()
                shutil.rmtree(rnd.cache, ignore_errors=True)
            if self.args.verbose:
                print(f"round {index:4d} {rnd.fault:24s} {time.monotonic() - t0:7.1f} s", file=sys.stderr)
        self.elapsed = time.monotonic() - t0
        return self.tally

    def close(self) -> None:
        self.close_pool()
        self.hub.stop()


def summary(tally: Tally, args: argparse.Namespace, elapsed: float) -> str:
    import huggingface_hub

    ratio = tally.served / tally.needed if tally.needed else float("nan")
    lines = [
        (
            f"soak: {tally.rounds} rounds x {args.workers} processes in {elapsed:.0f} s "
            f"(seed {args.seed}, huggingface_hub {huggingface_hub.__version__})"
        ),
        f"  loads ok                 {tally.ok}",
        (
            f"  loads failed             {tally.failed_expected + tally.failed_unexpected} "
            f"(injected unrecoverable: {tally.failed_expected}; unexpected: {tally.failed_unexpected})"
        ),
        f"  wrong tensors            {tally.wrong}",
        (
            f"  temp files left          {tally.temps_left} "
            f"({tally.temps_after_failure} right after unrecoverable rounds, all removed by the next run)"
        ),
        (
            f"  bytes served / needed    {tally.served} / {tally.needed} = {ratio:.3f}x "
            f"(recoverable rounds; {tally.served_unrecoverable} more in unrecoverable ones)"
        ),
        "  per fault:                rounds   ok  failed  served/needed",
    ]
    for fault in sorted(tally.per_fault):
        row = tally.per_fault[fault]
        r = f"{row['served'] / row['needed']:.2f}x" if row["needed"] else "-"
        errs = ", ".join(f"{k[6:]} x{v}" for k, v in sorted(row.items()) if k.startswith("error "))
        lines.append(f"    {fault:24s} {row['rounds']:6d} {row['ok']:5d} {row['failed']:7d}  {r:>8s}  {errs}")
    if tally.problems:
        lines.append("  problems:")
        lines.extend(f"    {p}" for p in tally.problems[:40])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument("--budget", type=float, default=840.0, help="stop starting rounds after this many s")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per round on stderr")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    work = Path(tempfile.mkdtemp(prefix="hub-prefetch-soak-"))
    soak = None
    try:
        soak = Soak(args, work)
        tally = soak.run()
        text = summary(tally, args, soak.elapsed)
    except Exception:
        traceback.print_exc()
        return 2
    finally:
        if soak is not None:
            soak.close()
        with contextlib.suppress(OSError):
            _run("umount", "-R", "-l", str(work / "caches"))
        shutil.rmtree(work, ignore_errors=True)
    print(text)
    if args.json:
        args.json.write_text(
            json.dumps(
                {**tally.__dict__, "per_fault": {k: dict(v) for k, v in tally.per_fault.items()}}, indent=1
            )
        )
    return 0 if not tally.problems and tally.wrong == 0 and tally.failed_unexpected == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
