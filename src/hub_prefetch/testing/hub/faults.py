"""Fault rules and the bandwidth limiter of the local Hub; lives on the server's event loop."""

from __future__ import annotations

import asyncio
import fnmatch
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FAULT_KINDS", "LISTING_MODES", "FaultSet", "Rule", "Throttle"]

FAULT_KINDS = ("fail", "drop", "stall", "hold", "corrupt")
#: How much the server tells about files, as mirrors differ: ``full`` (the Hub), ``bare-info`` (the info
#: answer names files without sizes or hashes; the tree listing has them), ``bare`` (no tree API either, and
#: no ``ETag`` on file answers: only the length says anything about a file).
LISTING_MODES = ("full", "bare-info", "bare")


@dataclass
class Rule:
    id: int
    kind: str
    glob: str
    method: str = "*"
    #: how many more requests this rule applies to; a negative value means every matching request
    remaining: int = 1
    status: int = 503
    retry_after: float | None = None
    nbytes: int = 0
    mode: str = "flip"
    arrived: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def matches(self, method: str, path: str) -> bool:
        return self.remaining != 0 and self.method in ("*", method) and fnmatch.fnmatchcase(path, self.glob)


class Throttle:
    """A token bucket without burst credit: each chunk books the next slot of the link and waits until its
    slot has passed, so ``n`` bytes never take less than ``n / rate`` seconds, however many responses share
    the link."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next = 0.0

    def chunk_size(self, default: int) -> int:
        # About 50 chunks per second keeps a throttled stream smooth without flooding the loop.
        return max(1024, min(default, int(self.rate / 50)))

    async def consume(self, nbytes: int) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._next = max(now, self._next) + nbytes / self.rate
        delay = self._next - now
        if delay > 0:
            await asyncio.sleep(delay)


class FaultSet:
    """Every knob of the server. All methods run on the server loop."""

    def __init__(self) -> None:
        self.rules: dict[int, Rule] = {}
        self.bandwidth: float | None = None
        self.shared_bandwidth = True
        self.shared_throttle: Throttle | None = None
        self.metadata_latency = 0.0
        self.listing_mode = "full"
        self.stopping = asyncio.Event()
        self.arrivals = asyncio.Condition()

    # -- configuration --------------------------------------------------------------------------------

    def add(self, spec: dict[str, Any]) -> int:
        kind = spec["kind"]
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        rule = Rule(
            id=int(spec["id"]),
            kind=kind,
            glob=str(spec["glob"]),
            method=str(spec.get("method", "*")).upper(),
            remaining=int(spec.get("count", 1)),
            status=int(spec.get("status", 503)),
            retry_after=None if spec.get("retry_after") is None else float(spec["retry_after"]),
            nbytes=int(spec.get("nbytes", 0)),
            mode=str(spec.get("mode", "flip")),
        )
        self.rules[rule.id] = rule
        return rule.id

    def clear(self, fault_id: int) -> None:
        rule = self.rules.pop(fault_id, None)
        if rule is not None:
            rule.remaining = 0
            rule.released.set()

    def clear_all(self) -> None:
        for fault_id in list(self.rules):
            self.clear(fault_id)
        self.bandwidth = None
        self.shared_throttle = None
        self.metadata_latency = 0.0
        self.listing_mode = "full"

    def release(self, fault_id: int) -> None:
        """Let parked requests of a hold go on, and stop parking later ones."""
        rule = self.rules.get(fault_id)
        if rule is not None:
            rule.remaining = 0
            rule.released.set()

    def set_bandwidth(self, rate: float | None, shared: bool) -> None:
        self.bandwidth = rate if rate and rate > 0 else None
        self.shared_bandwidth = shared
        if self.bandwidth is None:
            self.shared_throttle = None
        elif self.shared_throttle is None:
            self.shared_throttle = Throttle(self.bandwidth)
        else:
            self.shared_throttle.rate = self.bandwidth

    def throttle_for_response(self) -> Throttle | None:
        if self.bandwidth is None:
            return None
        if self.shared_bandwidth:
            assert self.shared_throttle is not None
            return self.shared_throttle
        return Throttle(self.bandwidth)

    def snapshot(self) -> dict[str, Any]:
        return {
            "bandwidth": self.bandwidth,
            "shared_bandwidth": self.shared_bandwidth,
            "metadata_latency": self.metadata_latency,
            "listing_mode": self.listing_mode,
            "rules": [
                {"id": r.id, "kind": r.kind, "glob": r.glob, "method": r.method, "remaining": r.remaining}
                for r in self.rules.values()
            ],
        }

    # -- use by the request handlers ------------------------------------------------------------------

    def take(self, kind: str, method: str, path: str) -> Rule | None:
        """The first live rule of ``kind`` matching the request, with one use consumed."""
        for rule in self.rules.values():
            if rule.kind == kind and rule.matches(method, path):
                if rule.remaining > 0:
                    rule.remaining -= 1
                return rule
        return None

    async def wait_released(self, rule: Rule) -> bool:
        """Wait until ``rule`` is released or cleared (True) or the server stops (False)."""
        if rule.released.is_set():
            return True
        released = asyncio.ensure_future(rule.released.wait())
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({released, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            released.cancel()
            stopping.cancel()
        return rule.released.is_set() and not self.stopping.is_set()

    async def park(self, rule: Rule) -> bool:
        async with self.arrivals:
            rule.arrived += 1
            self.arrivals.notify_all()
        return await self.wait_released(rule)

    async def wait_arrived(self, fault_id: int, n: int, timeout: float) -> bool:
        rule = self.rules.get(fault_id)
        if rule is None:
            return False
        async with self.arrivals:
            try:
                await asyncio.wait_for(self.arrivals.wait_for(lambda: rule.arrived >= n), timeout)
            except asyncio.TimeoutError:
                return False
        return True

    async def stop(self) -> None:
        self.stopping.set()
        async with self.arrivals:
            self.arrivals.notify_all()
