"""The commands of ``hub-prefetch``: ``warm``, ``verify``, ``repair``, ``locks``, ``doctor`` and ``demo``.

Each takes a :class:`Context` (parsed arguments, output streams, the status line) and returns its exit
code; errors propagate to :func:`hub_prefetch.cli.main`, which maps them to the documented exit codes.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from typing import Any, TextIO

from .. import cache, errors
from ..console import StatusLine, human_bytes, human_seconds
from ..demo import run_demo
from ..doctor import diagnose
from ..engine import observe
from ..lock import LockInfo, list_locks
from ..prefetch import PrefetchResult, prefetch, repair, verify
from ..settings import Settings
from .parser import EXIT_OK, EXIT_VERIFY_FAILED, print_json

__all__ = ["COMMANDS", "Context", "status_label"]

# ------------------------------------------------------------------------------------------ context


class Context:
    """What every command gets: parsed args, output streams, the status line and the settings."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO, status: StatusLine) -> None:
        self.args, self.out, self.err, self.status = args, out, err, status

    @functools.cached_property
    def settings(self) -> Settings:
        """The environment now, with ``--cache-dir`` and ``--lock-timeout`` on top: one object for the
        whole command, passed to the library (the CLI never writes ``os.environ``). Built on first use,
        so ``demo``, which needs none, does not parse them."""
        return Settings.from_env(
            cache_dir=getattr(self.args, "cache_dir", None),
            lock_timeout=getattr(self.args, "lock_timeout", None),
        )

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    def emit(self, data: dict[str, Any], human: str) -> None:
        if self.json:
            print_json(self.out, data)
        elif human:
            self.out.write(human.rstrip("\n") + "\n")
            self.out.flush()


def _request_kwargs(ctx: Context) -> dict[str, Any]:
    args = ctx.args
    return {
        "revision": args.revision,
        "repo_type": args.repo_type,
        "variant": args.variant,
        "all_files": args.all_files,
        "token": args.token,
        "settings": ctx.settings,
    }


def _subfolders(args: argparse.Namespace) -> list[str] | None:
    return list(args.subfolder) if args.subfolder else None


def _label(args: argparse.Namespace) -> str:
    return f"{args.repo}@{args.revision or 'main'}"


def _watch(ctx: Context) -> None:
    """Point the status line at the repo's blobs folder (nothing happens if the input is invalid)."""
    args = ctx.args
    try:
        folder = ctx.settings.cache_dir
        repo_id = cache.validate_repo_id(args.repo)
    except errors.InvalidRequestError:
        return
    ctx.status.watch_blobs(cache.blobs_dir(folder, args.repo_type or "model", repo_id))


def _result_lines(result: PrefetchResult) -> list[str]:
    lines = [
        f"  commit    {result.commit}",
        f"  snapshot  {result.snapshot_path}",
        f"  files     {len(result.files)} ({human_bytes(result.bytes_total)})",
    ]
    if result.warm:
        lines.append("  fetched   nothing: a verified stamp holds (no network call, no lock)")
    else:
        lines.append(
            f"  fetched   {len(result.downloaded)} file(s), {human_bytes(result.bytes_downloaded)}"
            + (f"; repaired {len(result.repaired)}" if result.repaired else "")
        )
    if result.unchecked:
        lines.append(
            f"  checked   {len(result.unchecked)} file(s) by size only: the Hub gave no digest for them"
        )
    waited = f" ({human_seconds(result.waited_s)} waiting for the lock)" if result.waited_s >= 0.05 else ""
    lines.append(f"  time      {human_seconds(result.elapsed_s)}{waited}")
    return lines


# ------------------------------------------------------------------------------------------ commands


def _cmd_warm(ctx: Context) -> int:
    args = ctx.args
    _watch(ctx)
    with ctx.status, observe(ctx.status.transfer):
        result = prefetch(
            args.repo, _subfolders(args), deep=True if args.deep else None, **_request_kwargs(ctx)
        )
    data = {"ok": True, "exit_code": EXIT_OK, "command": "warm", **result.to_dict()}
    state = "already warm" if result.warm else "warmed"
    ctx.emit(data, "\n".join([f"{state} {result.repo_id}@{result.revision}", *_result_lines(result)]))
    return EXIT_OK


def _cmd_verify(ctx: Context) -> int:
    args = ctx.args
    with ctx.status:
        report = verify(args.repo, _subfolders(args), deep=args.deep, **_request_kwargs(ctx))
    code = EXIT_OK if report.ok else EXIT_VERIFY_FAILED
    human = str(report)
    if not report.ok:
        hint = " ".join(["hub-prefetch repair", args.repo, *(f"-s {s}" for s in args.subfolder or [])])
        human += f"\nrun `{hint}` to re-fetch exactly these files"
    ctx.emit({"exit_code": code, "command": "verify", **report.to_dict()}, human)
    return code


def _cmd_repair(ctx: Context) -> int:
    args = ctx.args
    # A cheap stat-only look first, so the report can say what each fixed file's problem was; the
    # repair itself re-checks everything (with sha256 unless --no-deep) under the lock.
    kinds: dict[str, str] = {}
    try:
        before = verify(args.repo, _subfolders(args), deep=False, **_request_kwargs(ctx))
        kinds = {p.path: p.kind for p in before.problems}
    except (errors.CorruptRepoFileError, errors.OfflineCacheMissError):
        pass  # a broken local index or listing is for the repair to fix; it re-reads them under the lock
    _watch(ctx)
    with ctx.status, observe(ctx.status.transfer):
        result = repair(args.repo, _subfolders(args), deep=args.deep, **_request_kwargs(ctx))
    fixed = sorted(set(result.downloaded) | set(result.repaired))
    fixed_kinds = {p: kinds.get(p, "hash" if p in result.repaired else "bad") for p in fixed}
    data = {
        "ok": True,
        "exit_code": EXIT_OK,
        "command": "repair",
        "fixed": fixed_kinds,
        **result.to_dict(),
    }
    if fixed:
        head = f"repaired {result.repo_id}@{result.revision}: {len(fixed)} file(s) re-fetched"
        body = [f"  {kind:8s} {path}" for path, kind in fixed_kinds.items()]
    else:
        head = f"{result.repo_id}@{result.revision}: nothing to repair"
        body = []
    ctx.emit(data, "\n".join([head, *body, *_result_lines(result)]))
    return EXIT_OK


def _age(t: float) -> str:
    if not t:
        return "-"
    return human_seconds(max(time.time() - t, 0.0)) + " ago"


def _lock_row(info: LockInfo) -> dict[str, Any]:
    holder = info.holder
    if info.stale:
        state = "stale"
    elif holder is not None or info.reason.startswith("held"):
        state = "held"
    else:
        state = "free"
    return {
        "repo_id": info.repo_id or None,
        "repo_type": info.repo_type or None,
        "revision": info.revision or None,
        "backend": info.backend,
        "state": state,
        "stale": info.stale,
        "reason": info.reason,
        "path": str(info.path),
        "host": holder.host if holder else None,
        "pid": holder.pid if holder else None,
        "since": holder.acquired_at if holder else None,
        "heartbeat_at": holder.heartbeat_at if holder and info.backend == "lease" else None,
    }


def _lock_cells(info: LockInfo) -> tuple[str, str, str, str, str, str]:
    name = f"{info.repo_id}@{info.revision}" if info.repo_id else info.path.name
    if info.repo_type not in ("", "model"):
        name += f" ({info.repo_type})"
    holder = info.holder
    state = str(_lock_row(info)["state"])
    return (
        name,
        info.backend,
        state.upper() if info.stale else state,
        f"{holder.host}:{holder.pid}" if holder else "-",
        _age(holder.acquired_at) if holder else "-",
        info.reason,
    )


def _cmd_locks(ctx: Context) -> int:
    args = ctx.args
    folder = ctx.settings.cache_dir
    where = cache.lock_dir(folder)
    wanted = cache.validate_repo_id(args.repo) if args.repo else None
    locks = [
        info for info in list_locks(folder, settings=ctx.settings) if wanted is None or info.repo_id == wanted
    ]
    data = {
        "ok": True,
        "exit_code": EXIT_OK,
        "command": "locks",
        "lock_dir": str(where),
        "locks": [_lock_row(info) for info in locks],
    }
    if not locks:
        ctx.emit(data, f"no repo locks in {where}" + (f" for {wanted}" if wanted else ""))
        return EXIT_OK
    table = [("LOCK", "BACKEND", "STATE", "HOLDER", "SINCE", "DETAIL"), *(_lock_cells(i) for i in locks)]
    widths = [max(len(r[i]) for r in table) for i in range(5)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r[:5])) + "  " + r[5] for r in table]
    stale = sum(info.stale for info in locks)
    lines.append(
        f"{len(locks)} lock(s) in {where}"
        + (f"; {stale} stale (the next contender takes a stale lock over by itself)" if stale else "")
    )
    ctx.emit(data, "\n".join(lines))
    return EXIT_OK


def _cmd_doctor(ctx: Context) -> int:
    report = diagnose(settings=ctx.settings)
    code = EXIT_OK if report.ok else EXIT_VERIFY_FAILED
    ctx.emit({"exit_code": code, "command": "doctor", **report.to_dict()}, str(report))
    return code


def _cmd_demo(ctx: Context) -> int:
    # run_demo imports the optional testing extras (aiohttp, torch, transformers) only when it runs.
    return run_demo(ctx.args, out=ctx.out, err=ctx.err, status=ctx.status)


#: command name -> the function that runs it.
COMMANDS: dict[str, Callable[[Context], int]] = {
    "warm": _cmd_warm,
    "verify": _cmd_verify,
    "repair": _cmd_repair,
    "locks": _cmd_locks,
    "doctor": _cmd_doctor,
    "demo": _cmd_demo,
}


def status_label(args: argparse.Namespace) -> str:
    """What the status line is about: ``warm org/model@main``, or the bare command."""
    if args.command in ("warm", "verify", "repair"):
        return f"{args.command} {_label(args)}"
    return str(args.command)
