"""Read-only caches for real, root included: a process started through :func:`read_only_command` runs in
its own private mount namespace where the given folders are bind-mounted read-only over themselves. Nothing
changes for any other process, and nothing needs unmounting. Tests skip (with :func:`refusal`'s reason)
only where the kernel or the environment refuses."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["read_only_command", "refusal", "wrapper_script"]

# Mount each folder before "--" read-only over itself, then run the rest; 97 when a mount is refused.
_SCRIPT = (
    'while [ "$1" != "--" ]; do '
    'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" || exit 97; shift; '
    'done; shift; exec "$@"'
)


@functools.cache
def refusal() -> str | None:
    """Why read-only mounts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "a read-only bind mount needs root (chmod does not stop root)"
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _SCRIPT, "sh", "/tmp", "--", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"the kernel refuses a private mount namespace or a bind mount: {probe.stderr.strip()}"
    return None


def read_only_command(folders: Sequence[str | os.PathLike[str]], cmd: Sequence[str]) -> list[str]:
    """``cmd`` run with ``folders`` read-only in a private mount namespace."""
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        _SCRIPT,
        "sh",
        *(os.fspath(f) for f in folders),
        "--",
        *cmd,
    ]


def wrapper_script(path: Path, folders: Sequence[str | os.PathLike[str]], python: str) -> str:
    """An executable that runs ``python`` with its arguments under :func:`read_only_command` (for
    :class:`~hub_prefetch.testing.WorkerPool`'s ``python``)."""
    line = " ".join(f"'{part}'" for part in read_only_command(folders, [python]))
    path.write_text(f'#!/bin/sh\nexec {line} "$@"\n')
    path.chmod(0o755)
    return str(path)
