"""Simulated nodes with real links: one network namespace per node, joined to a bridge by a veth pair
whose two ends are rate-limited with ``tc`` (tbf), so a node's uplink and downlink are real bottlenecks.
Each queue holds at most 20 ms of traffic, a shallow switch buffer: a deep one (bufferbloat) holds the
acknowledgements of a node's uploads behind its own download and slows the uploads to a crawl.

The bridge carries ``10.<net>.0.254`` (a /24 no interface uses yet); node ``i`` is
``10.<net>.0.<i+1>`` on its interface ``eth0`` (one name inside every namespace:
``GLOO_SOCKET_IFNAME=eth0``). A local Hub bound to the bridge's address is reachable from every node.
A worker joins its node with :func:`enter` (``setns``) before it opens any socket. Needs root, ``ip``
and ``tc``; :data:`REFUSED` says why not, for a skip.

    from hub_prefetch.testing.netns import REFUSED, enter, links

    with links(4, rate_mbit=80) as net:             # 4 nodes, 10 MB/s each way per node
        hub = LocalHub(store, host=net.hub_ip).start()
        ...                                         # rank r of node i: enter(net.namespaces[i]) first

:data:`REFUSED` is worked out on first use (building and removing a one-node set of links), not on
import, so a worker that only calls :func:`enter` pays nothing for it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["REFUSED", "Links", "enter", "links", "refused"]

_CLONE_NEWNET = 0x40000000
_IP = shutil.which("ip") or "/usr/sbin/ip"
_TC = shutil.which("tc") or "/usr/sbin/tc"


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)


def _must(*cmd: str) -> None:
    out = _run(*cmd)
    if out.returncode != 0:
        raise OSError(f"{' '.join(cmd)}: {out.stderr.strip()}")


def _refusal() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces and tc need root"
    if not (os.path.exists(_IP) and os.path.exists(_TC)):
        return "ip or tc (iproute2) is not installed"
    try:
        with links(1, rate_mbit=100.0, tag=f"p{os.getpid() % 10000}"):
            return None
    except OSError as exc:
        return f"the kernel refuses: {exc}"


@dataclass(frozen=True)
class Links:
    """What :func:`links` built: one namespace per node (``namespaces[i]`` is node ``i``), the bridge's
    address ``hub_ip`` (bind a server there to reach it from every node) and the nodes' interface name."""

    namespaces: tuple[str, ...]
    hub_ip: str
    ifname: str = "eth0"

    def node_ip(self, i: int) -> str:
        """The address of node ``i`` on its ``eth0``."""
        return self.hub_ip.rsplit(".", 1)[0] + f".{i + 1}"


def _free_net() -> int:
    """A ``10.<net>.0.0/24`` no interface uses yet (the two stacks' suites may build links at once);
    each process starts looking at its own offset."""
    used = _run(_IP, "-4", "-o", "addr").stdout
    start = os.getpid() % 50
    for k in range(50):
        net = 200 + (start + k) % 50
        if f" 10.{net}.0." not in used:
            return net
    raise OSError("no free 10.200-249.0.0/24 subnet")


@contextlib.contextmanager
def links(nodes: int, *, rate_mbit: float, tag: str | None = None, net: int | None = None) -> Iterator[Links]:
    """``nodes`` namespaces on one bridge, every link limited to ``rate_mbit`` in each direction; all of it
    is removed on exit. ``tag`` names the interfaces and namespaces (default: from the pid), ``net`` picks
    the ``10.<net>.0.0/24`` subnet (default: a free one). Raises :class:`OSError` when ``ip`` fails."""
    tag = tag or str(os.getpid() % 100000)
    net = _free_net() if net is None else net
    bridge = f"hpb{tag}"
    subnet = f"10.{net}.0"
    names = tuple(f"hpf{tag}n{i}" for i in range(nodes))
    rate = f"{rate_mbit:g}mbit"
    burst = f"{max(16, int(rate_mbit * 1000 / 8 / 100))}kb"  # 10 ms of traffic, at least 16 kB
    try:
        _must(_IP, "link", "add", bridge, "type", "bridge")
        _must(_IP, "addr", "add", f"{subnet}.254/24", "dev", bridge)
        _must(_IP, "link", "set", bridge, "up")
        for i, ns in enumerate(names):
            outer, inner = f"hpv{tag}{i}a", f"hpv{tag}{i}b"
            _must(_IP, "netns", "add", ns)
            _must(_IP, "link", "add", outer, "type", "veth", "peer", "name", inner)
            _must(_IP, "link", "set", inner, "netns", ns)
            _must(_IP, "-n", ns, "link", "set", inner, "name", "eth0")
            _must(_IP, "-n", ns, "addr", "add", f"{subnet}.{i + 1}/24", "dev", "eth0")
            _must(_IP, "-n", ns, "link", "set", "eth0", "up")
            _must(_IP, "-n", ns, "link", "set", "lo", "up")
            _must(_IP, "link", "set", outer, "master", bridge)
            _must(_IP, "link", "set", outer, "up")
            # Egress of each end: the node's downlink (bridge -> node) and its uplink (node -> bridge).
            _must(
                _TC,
                "qdisc",
                "add",
                "dev",
                outer,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                burst,
                "latency",
                "20ms",
            )
            _must(
                _IP, "netns", "exec", ns, _TC, "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate,
                "burst", burst, "latency", "20ms",
            )  # fmt: skip
        yield Links(names, f"{subnet}.254")
    finally:
        for ns in names:
            _run(_IP, "netns", "del", ns)  # takes its veth pair along
        _run(_IP, "link", "del", bridge)


def enter(namespace: str) -> None:
    """Move this thread (call it from the main thread before opening sockets) into ``namespace``."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = os.open(f"/var/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns({namespace}): {os.strerror(code)}")
    finally:
        os.close(fd)


@functools.cache
def refused() -> str | None:
    """Why nodes cannot get their own network namespace here (None: they can); worked out once per
    process. Tests skip with this reason."""
    return _refusal()


#: Why nodes cannot get their own network namespace here (None: they can). Tests skip with this reason.
#: Computed on first access (see :func:`refused`).
REFUSED: str | None


def __getattr__(name: str) -> str | None:
    if name == "REFUSED":
        return refused()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
