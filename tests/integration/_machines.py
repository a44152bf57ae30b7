"""Simulated machines for tests: a process that calls :func:`become_machine` first gets its own mount
namespace with its own boot id bind-mounted over ``/proc/sys/kernel/random/boot_id``. It keeps the host
name and the pid namespace (whose name, ``pid:[4026531836]``, every Linux machine shares): to
hub-prefetch it is another machine, exactly as a cloned node with the same host name would be.

Call it in a fresh process (a ``multiprocessing`` child, a worker target) before any thread is
started: a mount namespace is unshared per thread, and threads started afterwards inherit it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
import uuid
from pathlib import Path

__all__ = ["REFUSED", "become_machine"]

_CLONE_NEWNS = 0x00020000
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def _refusal() -> str | None:
    if os.geteuid() != 0:
        return "simulating a machine needs root (a mount namespace and a bind mount of its boot id)"
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        return f"the kernel refuses a mount namespace: {probe.stderr.decode(errors='replace').strip()}"
    return None


#: Why machines cannot be simulated here (None: they can). Tests skip with this reason.
REFUSED = _refusal()


def become_machine(name: str, folder: str | os.PathLike[str]) -> str:
    """Make this process machine ``name``: a private mount namespace with boot id ``uuid5(name)``
    (written under ``folder``). Returns the boot id."""
    boot_id = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"hub-prefetch-test-machine-{name}"))
    boot_file = Path(folder) / f"boot_id-{name}"
    boot_file.parent.mkdir(parents=True, exist_ok=True)
    boot_file.write_text(boot_id + "\n")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

    def check(rc: int, what: str) -> None:
        if rc != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"{what}: {os.strerror(code)}")

    check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")
    check(libc.mount(os.fsencode(boot_file), BOOT_ID.encode(), None, _MS_BIND, None), "bind the boot id")
    assert Path(BOOT_ID).read_text().strip() == boot_id
    return boot_id
