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

Logging is configured here and only here (with :func:`hub_prefetch.console.configure_logging`): the
library only logs.

The package: :mod:`.parser` (arguments, exit codes, help texts), :mod:`.commands` (one function per
command); ``python -m hub_prefetch.cli`` runs :mod:`.__main__`. The CLI imports :mod:`hub_prefetch.demo`,
never the other way round; the status line both draw lives in :mod:`hub_prefetch.console`.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TextIO

from huggingface_hub.utils.tqdm import disable_progress_bars

from .. import errors
from ..console import StatusLine, configure_logging
from .commands import COMMANDS, Context, status_label
from .parser import (
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


def _report_error(ctx: Context, exc: BaseException, code: int) -> None:
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
    verbosity = -1 if args.quiet else args.verbose
    show = args.progress == "always" or (args.progress == "auto" and _isatty(err))
    status = StatusLine(err, enabled=show and not args.quiet, label=status_label(args))
    configure_logging(verbosity, status=status, stream=err)
    _quiet_hf_bars()
    ctx = Context(args, out, err, status)
    func: Callable[[Context], int] = COMMANDS[args.command]
    try:
        return func(ctx)
    except KeyboardInterrupt:
        err.write("hub-prefetch: interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every error becomes a documented exit code
        code = _exit_code_for(exc)
        _report_error(ctx, exc, code)
        return code


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _quiet_hf_bars() -> None:
    # N parallel downloads would draw N bars; the status line is the one display. In-process, not through
    # HF_HUB_DISABLE_PROGRESS_BARS: the CLI leaves os.environ alone. (A function in huggingface_hub 1.x,
    # a class usable as one in 2.x.)
    disable_progress_bars()
