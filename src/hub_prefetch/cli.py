"""``hub-prefetch``: warm, verify and repair a model in the HF cache, list repo locks, run the demo.

Exit codes (also in ``hub-prefetch --help``):

==== =====================================================================================
0    ok
1    verification failed: files missing, truncated, corrupt or dangling (or still so after repair)
2    usage error: bad arguments, bad repo id / revision / subfolder, unknown subfolder
3    lock timeout: another process held the repo lock longer than ``--lock-timeout``
4    hub error: no such repo / revision / file, no access, Hub unreachable, offline and not cached
5    cache error: the cache cannot be written (read-only, full disk, permissions)
70   internal error: a bug in hub-prefetch (the traceback is printed)
130  interrupted
==== =====================================================================================

Logging is configured here and only here: the library only logs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from huggingface_hub.utils.tqdm import disable_progress_bars

from . import cache, errors
from ._cli_parser import (
    EXIT_CACHE_ERROR,
    EXIT_CODES_HELP,
    EXIT_HUB_ERROR,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_LOCK_TIMEOUT,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_VERIFY_FAILED,
    Parser,
    build_parser,
    error_dict,
    print_json,
)
from .console import StatusLine, configure_logging, human_bytes, human_seconds
from .lock import LockInfo, list_locks
from .prefetch import PrefetchResult, prefetch, repair, verify
from .settings import Settings

__all__ = [
    "EXIT_CACHE_ERROR",
    "EXIT_CODES_HELP",
    "EXIT_HUB_ERROR",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_LOCK_TIMEOUT",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_VERIFY_FAILED",
    "build_parser",
    "main",
]

# ------------------------------------------------------------------------------------------ output


class _Context:
    """What every command gets: parsed args, output streams and the status line."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO, status: StatusLine) -> None:
        self.args, self.out, self.err, self.status = args, out, err, status

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    def emit(self, data: dict[str, Any], human: str) -> None:
        if self.json:
            print_json(self.out, data)
        elif human:
            self.out.write(human.rstrip("\n") + "\n")
            self.out.flush()


def _request_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "revision": args.revision,
        "repo_type": args.repo_type,
        "variant": args.variant,
        "all_files": args.all_files,
        "cache_dir": args.cache_dir,
        "token": args.token,
    }


def _subfolders(args: argparse.Namespace) -> list[str] | None:
    return list(args.subfolder) if args.subfolder else None


def _label(args: argparse.Namespace) -> str:
    return f"{args.repo}@{args.revision or 'main'}"


def _watch(ctx: _Context) -> None:
    """Point the status line at the repo's blobs folder (nothing happens if the input is invalid)."""
    args = ctx.args
    try:
        folder = Settings.from_env(cache_dir=args.cache_dir).cache_dir
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
    waited = f" ({human_seconds(result.waited_s)} waiting for the lock)" if result.waited_s >= 0.05 else ""
    lines.append(f"  time      {human_seconds(result.elapsed_s)}{waited}")
    return lines


# ------------------------------------------------------------------------------------------ commands


def _cmd_warm(ctx: _Context) -> int:
    args = ctx.args
    _watch(ctx)
    with ctx.status:
        result = prefetch(
            args.repo, _subfolders(args), deep=True if args.deep else None, **_request_kwargs(args)
        )
    data = {"ok": True, "exit_code": EXIT_OK, "command": "warm", **result.to_dict()}
    state = "already warm" if result.warm else "warmed"
    ctx.emit(data, "\n".join([f"{state} {result.repo_id}@{result.revision}", *_result_lines(result)]))
    return EXIT_OK


def _cmd_verify(ctx: _Context) -> int:
    args = ctx.args
    with ctx.status:
        report = verify(args.repo, _subfolders(args), deep=args.deep, **_request_kwargs(args))
    code = EXIT_OK if report.ok else EXIT_VERIFY_FAILED
    human = str(report)
    if not report.ok:
        hint = " ".join(["hub-prefetch repair", args.repo, *(f"-s {s}" for s in args.subfolder or [])])
        human += f"\nrun `{hint}` to re-fetch exactly these files"
    ctx.emit({"exit_code": code, "command": "verify", **report.to_dict()}, human)
    return code


def _cmd_repair(ctx: _Context) -> int:
    args = ctx.args
    # A cheap stat-only look first, so the report can say what each fixed file's problem was; the
    # repair itself re-checks everything (with sha256 unless --no-deep) under the lock.
    kinds: dict[str, str] = {}
    try:
        before = verify(args.repo, _subfolders(args), deep=False, **_request_kwargs(args))
        kinds = {p.path: p.kind for p in before.problems}
    except (errors.CorruptRepoFileError, errors.OfflineCacheMissError):
        pass  # a broken local index or listing is for the repair to fix; it re-reads them under the lock
    _watch(ctx)
    with ctx.status:
        result = repair(args.repo, _subfolders(args), deep=args.deep, **_request_kwargs(args))
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


def _cmd_locks(ctx: _Context) -> int:
    args = ctx.args
    folder = Settings.from_env(cache_dir=args.cache_dir).cache_dir
    where = cache.lock_dir(folder)
    wanted = cache.validate_repo_id(args.repo) if args.repo else None
    locks = [info for info in list_locks(folder) if wanted is None or info.repo_id == wanted]
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


def _cmd_demo(ctx: _Context) -> int:
    from .demo import run_demo  # noqa: PLC0415 - the demo needs the optional testing extras

    return run_demo(ctx.args, out=ctx.out, err=ctx.err, status=ctx.status)


_COMMANDS: dict[str, Callable[[_Context], int]] = {
    "warm": _cmd_warm,
    "verify": _cmd_verify,
    "repair": _cmd_repair,
    "locks": _cmd_locks,
    "demo": _cmd_demo,
}


# ------------------------------------------------------------------------------------------ errors


def _exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, errors.LockTimeout):
        return EXIT_LOCK_TIMEOUT
    if isinstance(exc, errors.InvalidRequestError):
        return EXIT_USAGE
    if isinstance(exc, errors.IncompleteSnapshotError):
        return EXIT_VERIFY_FAILED
    if isinstance(exc, errors.CacheWriteError):
        return EXIT_CACHE_ERROR
    if isinstance(exc, errors.HubPrefetchError):
        return EXIT_HUB_ERROR
    return EXIT_INTERNAL


def _report_error(ctx: _Context, exc: BaseException, code: int) -> None:
    facts = dict(exc.facts) if isinstance(exc, errors.HubPrefetchError) else {}
    if ctx.json:
        print_json(
            ctx.out,
            {
                "ok": False,
                "exit_code": code,
                "command": ctx.args.command,
                "error": error_dict(type(exc).__name__, str(exc), facts),
            },
        )
    if code == EXIT_INTERNAL:
        ctx.err.write("hub-prefetch: internal error, please report it with this traceback:\n")
        ctx.err.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    elif not ctx.json or not ctx.args.quiet:
        ctx.err.write(f"hub-prefetch: {type(exc).__name__}: {exc}\n")
    ctx.err.flush()


# ------------------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the CLI; return the exit code (the ``hub-prefetch`` script exits with it)."""
    out = out or sys.stdout
    err = err or sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    Parser.json_errors = "--json" in argv
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    finally:
        Parser.json_errors = False
    if getattr(args, "lock_timeout", None) is not None:
        # Settings are read from the environment at call time; this process is ours to configure.
        os.environ["HUB_PREFETCH_LOCK_TIMEOUT"] = str(args.lock_timeout)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    verbosity = -1 if args.quiet else args.verbose
    show = args.progress == "always" or (args.progress == "auto" and _isatty(err))
    status = StatusLine(err, enabled=show and not args.quiet, label=_status_label(args))
    configure_logging(verbosity, status=status, stream=err)
    _quiet_hf_bars()
    ctx = _Context(args, out, err, status)
    func: Callable[[_Context], int] = _COMMANDS[args.command]
    try:
        return func(ctx)
    except KeyboardInterrupt:
        err.write("hub-prefetch: interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every error becomes a documented exit code
        code = _exit_code_for(exc)
        _report_error(ctx, exc, code)
        return code


def _status_label(args: argparse.Namespace) -> str:
    if args.command in ("warm", "verify", "repair"):
        return f"{args.command} {_label(args)}"
    return str(args.command)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _quiet_hf_bars() -> None:
    # N parallel downloads would draw N bars; the status line is the one display. (A function in
    # huggingface_hub 1.x, a class usable as one in 2.x.)
    disable_progress_bars()


if __name__ == "__main__":
    sys.exit(main())
