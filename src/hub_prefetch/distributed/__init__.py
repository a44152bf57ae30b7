"""``torch.distributed`` jobs: one download per cache domain, one commit and one typed error for all.

* :mod:`.flow` — :func:`prefetch_distributed` (the protocol is in its docstring);
* :mod:`.domains` — which ranks share a cache (:func:`plan_domains`);
* :mod:`.beacon` — the leader's heartbeat file, and when a follower takes over;
* :mod:`.fanout` — several cache domains: one downloads, the others' leaders receive from peers;
* :mod:`.transfer` — the fan-out's framed, time-bounded messages over a gloo subgroup.

``torch`` is an optional dependency: it is imported only when :func:`prefetch_distributed` runs.
"""

from __future__ import annotations

from .domains import CacheScope, DomainPlan, RankInfo, plan_domains
from .flow import prefetch_distributed

__all__ = ["CacheScope", "DomainPlan", "RankInfo", "plan_domains", "prefetch_distributed"]
