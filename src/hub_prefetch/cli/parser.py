"""The ``hub-prefetch`` argument parser, exit codes and help texts (the commands live in :mod:`.commands`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from .. import __version__
from ..demo.faults import FAULTS

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
    "Parser",
    "build_parser",
    "error_dict",
    "print_json",
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
  hub-prefetch doctor
  hub-prefetch demo --workers 8 --fault killed-downloader

{EXIT_CODES_HELP}
The cache is HF_HUB_CACHE (or HF_HOME/hub), the Hub is HF_ENDPOINT, as for huggingface_hub.
"""


def print_json(stream: TextIO, data: Any) -> None:
    stream.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    stream.flush()


def error_dict(kind: str, message: str, facts: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": kind, "message": message, "facts": facts or {}}


# ------------------------------------------------------------------------------------------ parsing


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as JSON when ``--json`` is among the arguments."""

    json_errors = False

    def error(self, message: str) -> Any:
        if self.json_errors:
            print_json(
                sys.stdout,
                {"ok": False, "exit_code": EXIT_USAGE, "error": error_dict("UsageError", message)},
            )
            sys.exit(EXIT_USAGE)
        super().error(message)


def _common(json_too: bool = True) -> Parser:
    p = Parser(add_help=False)
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


def _repo_args() -> Parser:
    p = Parser(add_help=False)
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
    parser = Parser(
        prog="hub-prefetch",
        description="Load one HuggingFace Hub model from many processes at once: one download per cache, "
        "verified commit-pinned snapshots, repaired caches, visible locks.",
        epilog=MAIN_EPILOG,
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"hub-prefetch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
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

    p = sub.add_parser(
        "doctor",
        parents=[common],
        formatter_class=fmt,
        help="check a cache's filesystem, locks, clock and temp files; exit 1 on a problem",
        description="What to run when loads hang or a cluster shares a cache: probe the cache's filesystem "
        "as the lock does (flock works, excludes across descriptors; O_EXCL and link() atomic; network "
        "filesystem type), its sharing bits and free space, this host's clock against the filesystem's "
        "and the lease holders', every lock with its holder and age, and orphan temp files; and say which "
        "lock backend auto picks and why. Changes nothing but its probe files (and creates the lock folder "
        "if missing).",
        epilog="examples:\n  hub-prefetch doctor\n  hub-prefetch doctor --cache-dir /shared/hf/hub --json\n\n"
        "exit codes: 0 healthy (warnings allowed), 1 problems found, 2 usage error",
    )
    p.add_argument("--cache-dir", type=Path, help="the hub cache (default: HF_HUB_CACHE or HF_HOME/hub)")

    p = sub.add_parser(
        "demo",
        parents=[common],
        formatter_class=fmt,
        help="N workers load one model on cold caches under each fault: plain vs hub-prefetch",
        description="On an embedded local Hub (no network), build a tiny sharded model and let N real worker "
        "processes load it at once on a cold cache, with plain from_pretrained and with hub-prefetch. "
        "Without --scenario: one run per side of every scenario (no fault, warm, Hub 503s, the downloader "
        "killed, flock a no-op), one table row each, and the same figures as a PNG chart. With "
        "--scenario NAME: that scenario in depth (--rounds cold runs per side, then warm). Prints failed "
        "workers, time until all loaded, bytes served / needed, Hub requests and temp files left behind.",
        epilog="scenarios (faults):\n"
        + "".join(f"  {fault.name:17s}  {fault.summary}\n" for fault in FAULTS.values())
        + "\nexamples:\n  hub-prefetch demo\n  hub-prefetch demo --scenario noop-flock --workers 16\n"
        "  hub-prefetch demo --scenario killed-downloader --json\n\n"
        "exit codes: 0 when every hub-prefetch worker loaded the right weights, 1 otherwise, 2 usage error",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        metavar="N",
        help="worker processes (default 6 per scenario; 8 with --scenario)",
    )
    p.add_argument(
        "--scenario",
        "--fault",
        dest="fault",
        choices=tuple(FAULTS),
        default=None,
        help="run only this scenario, in depth (default: every scenario once)",
    )
    p.add_argument(
        "--bandwidth",
        type=float,
        default=2.0,
        metavar="MB_PER_S",
        help="the local Hub's shared link speed in MB/s (default 2; 0: unthrottled)",
    )
    p.add_argument(
        "--rounds",
        type=_positive_int,
        default=None,
        metavar="R",
        help="cold runs per side, each on a fresh cache (with --scenario; default 3: races are "
        "probabilistic)",
    )
    p.add_argument(
        "--chart",
        type=Path,
        default=Path("hub-prefetch-demo.png"),
        metavar="PNG",
        help="where the overview writes its chart (default: ./hub-prefetch-demo.png)",
    )
    p.add_argument("--no-chart", action="store_true", help="do not draw the overview's chart")
    p.add_argument("--keep", action="store_true", help="keep the demo's folder (store, caches) and print it")
    return parser
