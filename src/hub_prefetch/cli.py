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
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from huggingface_hub.utils.tqdm import disable_progress_bars

from . import __version__, cache, errors
from ._cli_progress import StatusLine, configure_logging, human_bytes, human_seconds
from .lock import LockInfo, list_locks
from .prefetch import PrefetchResult, prefetch, repair, verify
from .settings import Settings

__all__ = [
    "EXIT_CACHE_ERROR",
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

EXIT_OK = 0
EXIT_VERIFY_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCK_TIMEOUT = 3
EXIT_HUB_ERROR = 4
EXIT_CACHE_ERROR = 5
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0  ok
  1  verification failed (missing, truncated, corrupt or dangling files)
  2  usage error (bad arguments, repo id, revision or subfolder)
  3  lock timeout (another process held the repo lock past --lock-timeout)
  4  hub error (no such repo/revision/file, no access, Hub unreachable, offline and not cached)
  5  cache error (the cache cannot be written)
  70 internal error (a bug: the traceback is printed; please report it)
  130 interrupted
"""

MAIN_EPILOG = f"""\
examples:
  hub-prefetch warm org/model --subfolder text_encoder --subfolder tokenizer
  hub-prefetch verify org/model --deep --json
  hub-prefetch repair org/model
  hub-prefetch locks
  hub-prefetch demo --workers 8 --fault killed-downloader

{EXIT_CODES_HELP}
The cache is HF_HUB_CACHE (or HF_HOME/hub), the Hub is HF_ENDPOINT, as for huggingface_hub.
"""

_FAULTS = ("none", "killed-downloader", "http-503", "noop-flock", "stale-lease")


# ------------------------------------------------------------------------------------------ parsing


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as JSON when ``--json`` is among the arguments."""

    json_errors = False

    def error(self, message: str) -> Any:
        if self.json_errors:
            _print_json(
                sys.stdout,
                {"ok": False, "exit_code": EXIT_USAGE, "error": _error_dict("UsageError", message)},
            )
            sys.exit(EXIT_USAGE)
        super().error(message)


def _common(json_too: bool = True) -> _Parser:
    p = _Parser(add_help=False)
    g = p.add_argument_group("output")
    if json_too:
        g.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    g.add_argument("-q", "--quiet", action="store_true", help="errors only; no progress line")
    g.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="the status line on stderr (auto: only on a terminal)",
    )
    return p


def _repo_args() -> _Parser:
    p = _Parser(add_help=False)
    p.add_argument("repo", metavar="REPO", help="repo id on the Hub, e.g. org/model")
    g = p.add_argument_group("what to load")
    g.add_argument(
        "-s",
        "--subfolder",
        action="append",
        metavar="S",
        help="a subfolder the load reads (repeatable; default: the repo root)",
    )
    g.add_argument("-r", "--revision", help="branch, tag or commit (default: main)")
    g.add_argument("--repo-type", choices=("model", "dataset", "space"), default=None)
    g.add_argument("--variant", help="weights variant, e.g. fp16")
    g.add_argument(
        "--all",
        dest="all_files",
        action="store_true",
        help="every file of the subfolders, not only what a load reads",
    )
    g = p.add_argument_group("where")
    g.add_argument("--cache-dir", type=Path, help="the hub cache (default: HF_HUB_CACHE or HF_HOME/hub)")
    g.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    g.add_argument(
        "--lock-timeout",
        type=float,
        metavar="SECONDS",
        help="give up waiting for the repo lock after this long (exit 3; default: wait)",
    )
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError("must be between 1 and 64")
    return value


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="hub-prefetch",
        description="Load one HuggingFace Hub model from many processes at once: one download per cache, "
        "verified commit-pinned snapshots, repaired caches, visible locks.",
        epilog=MAIN_EPILOG,
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"hub-prefetch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    common, repo = _common(), _repo_args()

    p = sub.add_parser(
        "warm",
        parents=[repo, common],
        formatter_class=fmt,
        help="download and verify what a load needs (job prologues, init containers)",
        description="Download and verify what loading REPO (its subfolders) needs, under the repo lock, and "
        "print the commit, files, bytes and time. Already warm: no network call, no lock.",
        epilog="examples:\n  hub-prefetch warm org/model\n"
        "  hub-prefetch warm org/sd-model -s unet -s vae -s text_encoder --variant fp16\n"
        "  hub-prefetch warm org/model --revision v1.0 --lock-timeout 600 --json\n\n" + EXIT_CODES_HELP,
    )
    p.add_argument("--deep", action="store_true", help="also check the sha256 of every file")
    p.set_defaults(func=_cmd_warm)

    p = sub.add_parser(
        "verify",
        parents=[repo, common],
        formatter_class=fmt,
        help="report missing, wrong-size, wrong-hash and dangling files; exit 1 if any",
        description="Check the cached snapshot of REPO against the Hub's listing of its commit, download "
        "nothing, and report every missing, wrong-size, wrong-hash (--deep) and dangling file.",
        epilog="examples:\n  hub-prefetch verify org/model\n"
        "  hub-prefetch verify org/model -s unet --deep --json\n\n" + EXIT_CODES_HELP,
    )
    p.add_argument("--deep", action="store_true", help="hash every file (sha256 / git blob id)")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser(
        "repair",
        parents=[repo, common],
        formatter_class=fmt,
        help="re-fetch exactly the files verify reports",
        description="Under the repo lock, check every file the load needs (sha256 too, unless --no-deep) "
        "and re-fetch exactly the bad ones.",
        epilog="examples:\n  hub-prefetch repair org/model\n"
        "  hub-prefetch repair org/model -s text_encoder --no-deep\n\n" + EXIT_CODES_HELP,
    )
    p.add_argument(
        "--deep", action=argparse.BooleanOptionalAction, default=True, help="hash every file (default: yes)"
    )
    p.set_defaults(func=_cmd_repair)

    p = sub.add_parser(
        "locks",
        parents=[common],
        formatter_class=fmt,
        help="who holds which repo lock, and which are stale",
        description="List the repo locks in the cache: holder host, pid, since when, backend, and whether "
        "the lock is stale (its holder died, or its lease heartbeat stopped).",
        epilog="examples:\n  hub-prefetch locks\n  hub-prefetch locks org/model --json\n\n" + EXIT_CODES_HELP,
    )
    p.add_argument("repo", metavar="REPO", nargs="?", help="only the locks of this repo id")
    p.add_argument("--cache-dir", type=Path, help="the hub cache (default: HF_HUB_CACHE or HF_HOME/hub)")
    p.set_defaults(func=_cmd_locks)

    p = sub.add_parser(
        "demo",
        parents=[common],
        formatter_class=fmt,
        help="N workers load one model on a cold cache: plain vs hub-prefetch, under a fault",
        description="On an embedded local Hub (no network), build a tiny sharded model and let N real worker "
        "processes load it on a cold cache: first with plain from_pretrained, then with hub-prefetch, under "
        "a chosen fault, then once more warm. Prints failed workers, time until all loaded, bytes served / "
        "needed, Hub requests and temp files left behind, side by side.",
        epilog="faults:\n"
        "  none               no fault: the plain race of N cold loaders\n"
        "  killed-downloader  the process that is downloading is SIGKILLed mid-shard\n"
        "  http-503           the Hub answers 503 to the first file requests\n"
        "  noop-flock         flock() succeeds but locks nothing (Lustre, NFS local_lock, FUSE)\n"
        "  stale-lease        a dead holder on another host left a repo lease behind\n\n"
        "examples:\n  hub-prefetch demo\n  hub-prefetch demo --workers 16 --fault noop-flock\n"
        "  hub-prefetch demo --fault killed-downloader --json\n\n"
        "exit codes: 0 when every hub-prefetch worker loaded the right weights, 1 otherwise, 2 usage error",
    )
    p.add_argument(
        "--workers", type=_positive_int, default=8, metavar="N", help="worker processes (default 8)"
    )
    p.add_argument("--fault", choices=_FAULTS, default="none", help="the fault to inject (default: none)")
    p.add_argument(
        "--bandwidth",
        type=float,
        default=2.0,
        metavar="MB_PER_S",
        help="the local Hub's shared link speed in MB/s (default 2)",
    )
    p.add_argument(
        "--rounds",
        type=_positive_int,
        default=3,
        metavar="R",
        help="cold runs per side, each on a fresh cache (default 3: races are probabilistic)",
    )
    p.add_argument("--keep", action="store_true", help="keep the demo's folder (store, caches) and print it")
    p.set_defaults(func=_cmd_demo)
    return parser


# ------------------------------------------------------------------------------------------ output


def _print_json(stream: TextIO, data: Any) -> None:
    stream.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    stream.flush()


def _error_dict(kind: str, message: str, facts: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": kind, "message": message, "facts": facts or {}}


class _Context:
    """What every command gets: parsed args, output streams and the status line."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO, status: StatusLine) -> None:
        self.args, self.out, self.err, self.status = args, out, err, status

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    def emit(self, data: dict[str, Any], human: str) -> None:
        if self.json:
            _print_json(self.out, data)
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
        _print_json(
            ctx.out,
            {
                "ok": False,
                "exit_code": code,
                "command": ctx.args.command,
                "error": _error_dict(type(exc).__name__, str(exc), facts),
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
    _Parser.json_errors = "--json" in argv
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    finally:
        _Parser.json_errors = False
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
    func: Callable[[_Context], int] = args.func
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
