"""Ctrl-C in ``hub-prefetch warm`` during a throttled download: exit 130 with one line and no traceback,
promptly, the repo lock free at once for another process, and no temp file left in ``blobs/``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _faultkit import repo_dir, wait_until

from hub_prefetch import cli

REPO = "tiny/sharded-bert"
SUB = "text_encoder"
#: The issue's promise: Ctrl-C during a large download returns within about a second; 2 s with margin.
PROMPT_EXIT_S = 2.0
_TAKE_LOCK_AT_ONCE = (
    "import sys; from hub_prefetch.lock import RepoLock\n"
    "lock = RepoLock(sys.argv[1], sys.argv[2], timeout=0)\n"
    "lock.acquire(); lock.release(); print('acquired')"
)


@contextlib.contextmanager
def _sigint_as_from_a_terminal() -> Iterator[None]:
    """A suite started in the background (``make test &``) inherits SIGINT ignored, and an ignored SIGINT
    stays ignored across exec. While this is set, a child starts with the default a terminal gives it (a
    Python handler is reset to the default at exec)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _bytes_in_blobs(blobs: Path) -> int:
    try:
        return sum(p.stat().st_size for p in blobs.iterdir())
    except OSError:
        return 0


def test_ctrl_c_during_a_throttled_warm_exits_130_promptly_clean_and_unlocked(
    hf_env: dict[str, str], hf_cache: Path, local_hub: Any, built_repos: dict[str, Any]
) -> None:
    local_hub.set_bandwidth(200_000)  # ~2 MB of shards: about ten seconds to download
    blobs = repo_dir(hf_cache, REPO) / "blobs"
    partial = repo_dir(hf_cache, REPO) / ".hub_prefetch" / "partial"
    with _sigint_as_from_a_terminal():
        proc = subprocess.Popen(
            [sys.executable, "-m", "hub_prefetch.cli", "warm", REPO, "-s", SUB],
            env={**os.environ, **hf_env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        # Interrupt once weight bytes are flowing into the cache: the download is under way.
        wait_until(
            lambda: local_hub.bytes_served("*.safetensors") > 0 and _bytes_in_blobs(partial) > 0,
            timeout=60,
            what="a shard download under way",
        )
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"still running 60 s after SIGINT\n{err}")
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"\nSIGINT -> exit {proc.returncode} in {took:.2f} s")
    assert proc.returncode == cli.EXIT_INTERRUPTED, (out, err)
    assert err.strip().splitlines()[-1] == "hub-prefetch: interrupted", err
    assert "Traceback" not in err
    # The lock is free: another process takes it without waiting.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            _TAKE_LOCK_AT_ONCE,
            str(hf_cache),
            REPO,
        ],
        env={**os.environ, **hf_env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.stdout.strip() == "acquired", probe.stderr
    assert not [p.name for p in blobs.glob("*.incomplete")]
    # What arrived is kept as resume points, opened only by the next lock holder, never published.
    assert _bytes_in_blobs(partial) > 0
    assert took < PROMPT_EXIT_S, f"exit took {took:.2f} s after SIGINT"
