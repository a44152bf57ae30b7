"""``python -m hub_prefetch.testing.hub --root DIR``: serve a :class:`~hub_prefetch.testing.store.RepoStore`
by hand, or as the subprocess of :meth:`LocalHub.spawn <hub_prefetch.testing.hub.client.LocalHub.spawn>`.

Prints ``LOCALHUB-READY <port> <cdn port or 0>`` once it accepts requests; stops on SIGTERM, SIGINT or a
``/_hub/shutdown`` request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from ..store import RepoStore
from .app import READY, HubApp, run_server

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hub_prefetch.testing.hub", description="Serve a RepoStore as a local Hub."
    )
    parser.add_argument("--root", required=True, help="RepoStore folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tree-page-size", type=int, default=1000)
    parser.add_argument("--redirect-lfs", action="store_true")
    args = parser.parse_args(argv)
    state = HubApp(RepoStore(args.root), redirect_lfs=args.redirect_lfs, tree_page_size=args.tree_page_size)

    def on_ready(port: int, cdn_port: int) -> None:
        sys.stdout.write(f"{READY} {port} {cdn_port}\n")
        sys.stdout.flush()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await run_server(state, args.host, args.port, on_ready, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
