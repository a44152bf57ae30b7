"""One Hub download per torch.distributed job: node-local caches fed by peers (issue 14).

Nodes are simulated as in ``test_distributed.py``: each rank is a real process with a host identity
(``HUB_PREFETCH_HOST_ID``) and its node's own cache folder; gloo on 127.0.0.1, a FileStore. Rank 0's
node downloads from the local Hub; every other node's leader receives the files along the chain of
leaders. Faults are forced, not hoped for: the source's download is stalled mid-shard by the local Hub
(``stall``), a process is killed only once the test has seen the state it wants (a blob published on
that node), a chunk is corrupted by the sender's test knob (``HUB_PREFETCH_FANOUT_FAULT``).

Figures (Hub bytes per model size, time until every rank loaded) are printed with ``-s``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import hub_prefetch
from tests.support import dist_ranks
from tests.support.dist_ranks import SHARDED, SUB

pytestmark = pytest.mark.slow

SHARD = f"{SUB}/model-00002-of-00003.safetensors"
TARGET = f"{Path(__file__).stem}:rank_main"
TTL = 3.0  # the lease TTL: also every peer transfer's timeout
FAULT = "HUB_PREFETCH_FANOUT_FAULT"


# ----------------------------------------------------------------------------- worker target


def rank_main(
    *,
    rank: int,
    world: int,
    init_file: str,
    host_id: str,
    phases: list[dict[str, Any]],
    netns: str | None = None,
    group_ranks: list[int] | None = None,
) -> dict[str, Any]:
    """One rank: join the group; per phase, prefetch_distributed then load with local_files_only.
    A phase's ``env`` is set first (a test knob read at call time); ``fanout`` is passed on.
    ``netns``: first move into that node's network namespace (gloo then talks over its ``eth0``).
    ``group_ranks``: every rank creates ``new_group(group_ranks)``; only its members run the phases, with
    ``group=`` that group (lined up by its barrier), recording the fan-out's own log lines (``heard``);
    every rank then meets the others at a final barrier."""
    os.environ["HUB_PREFETCH_HOST_ID"] = host_id
    if netns is not None:
        from hub_prefetch.testing.netns import enter

        enter(netns)
        os.environ["GLOO_SOCKET_IFNAME"] = "eth0"
    dist = dist_ranks.join(rank, world, init_file)
    from hub_prefetch.distributed import prefetch_distributed

    # new_group is a collective over the default group: members or not, every rank calls it.
    group = dist.new_group(group_ranks) if group_ranks is not None else None
    member = group_ranks is None or rank in group_ranks
    out: dict[str, Any] = {"rank": rank, "phases": []}
    for spec in phases if member else []:
        for key, value in spec.get("env", {}).items():
            os.environ[key] = value  # read at call time (a test knob of this phase)
        call = functools.partial(
            prefetch_distributed,
            SHARDED,
            [SUB],
            cache_dir=spec["cache_dir"],
            fanout=spec.get("fanout"),
            **({"group": group} if group is not None else {}),
        )
        with _heard("hub_prefetch.distributed", on=group is not None) as heard:
            rec = dist_ranks.timed_phase(
                call, repo_id=SHARDED, subfolder=SUB, cache_dir=spec["cache_dir"], barrier_group=group
            )
        out["phases"].append({**rec, "heard": heard} if group is not None else rec)
    if group_ranks is not None:
        dist.barrier()
    return out


@contextlib.contextmanager
def _heard(name: str, *, on: bool) -> Iterator[list[str]]:
    """The messages logger ``name`` (and its children) emit at DEBUG and above while inside, if ``on``."""
    heard: list[str] = []
    if not on:
        yield heard
        return

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            heard.append(record.getMessage())

    logger = logging.getLogger(name)
    keep, level = _Keep(logging.DEBUG), logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.DEBUG)
    try:
        yield heard
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)


# ----------------------------------------------------------------------------- helpers


def _env(hf_env: dict[str, Any], **extra: str) -> dict[str, Any]:
    return dist_ranks.worker_env(hf_env, lease_ttl=TTL, **extra)


def _caches(tmp_path: Path, hosts: Sequence[str], label: str) -> list[dict[str, Any]]:
    return [{"cache_dir": str(tmp_path / label / h / "hub")} for h in hosts]


def _pool(
    env: dict[str, Any],
    tmp_path: Path,
    hosts: Sequence[str],
    phases: Sequence[Sequence[dict[str, Any]]],
    netns: Sequence[str] | None = None,
    **kw: Any,
) -> Any:
    per_rank = [{"netns": ns} for ns in netns] if netns is not None else None
    kwargs = dist_ranks.rank_kwargs(tmp_path, hosts, phases, per_rank=per_rank, **kw)
    return dist_ranks.pool(TARGET, env, kwargs)


def _shards_received(cache_dir: str) -> int:
    """Weight shards published in a node's cache (blobs of 30 kB and more; configs are smaller)."""
    folder = Path(cache_dir) / "models--tiny--sharded-bert" / "blobs"
    try:
        return sum(p.stat().st_size > 30_000 for p in folder.iterdir() if "." not in p.name)
    except OSError:
        return 0


def _until(what: str, check: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def _stalled(hub: Any) -> bool:
    return any(q.filename == SHARD and q.bytes_sent > 0 and q.t_end is None for q in hub.requests())


# ----------------------------------------------------------------------------- fan-out


# The suite: 2 x 2 against every node downloading, 4 x 2 and 8 x 1 fan-out only (bounded on 2 cores);
# `make soak`: 4 x 2 and 8 x 2 against every node downloading.
@pytest.mark.parametrize(
    ("nodes", "per_node", "baseline"),
    [
        (2, 2, True),
        (4, 2, False),
        (8, 1, False),
        pytest.param(4, 2, True, marks=pytest.mark.soak),
        pytest.param(8, 2, True, marks=pytest.mark.soak),
    ],
    ids=["2x2", "4x2", "8x1", "4x2-baseline", "8x2-baseline"],
)
def test_one_hub_download_for_the_whole_job(
    local_hub: Any,
    built_repos: Any,
    hf_env: dict[str, Any],
    tmp_path: Path,
    nodes: int,
    per_node: int,
    baseline: bool,
) -> None:
    """Node-local caches: the model comes from the Hub once (1.00x), every rank loads the same commit;
    ``baseline``: then the same job with the fan-out off, where every node downloads (N x)."""
    built = built_repos["sharded"]
    model = dist_ranks.model_bytes(local_hub, built.commit)
    local_hub.set_bandwidth(model / 1.5)  # one download takes about 1.5 s
    hosts = [f"node-{n}" for n in range(nodes) for _ in range(per_node)]
    phases = [_caches(tmp_path, hosts, "fanout")]
    if baseline:
        phases.append([{**c, "fanout": False} for c in _caches(tmp_path, hosts, "each")])
    with _pool(_env(hf_env), tmp_path, hosts, phases) as pool:
        pool.wait_ready()
        pool.go()
        values = dist_ranks.ok(pool.results())
    times = []
    for i, expected in enumerate([1, nodes][: len(phases)]):
        recs = dist_ranks.phase(values, i)
        dist_ranks.all_loaded(recs, built)
        requests = dist_ranks.window(local_hub, recs)
        served = dist_ranks.get_bytes(requests)
        assert served == expected * model, (i, served, model)
        for f in [p for p in local_hub.store.files(SHARDED, built.commit) if p.startswith(f"{SUB}/")]:
            assert sum(q.full_body and q.filename == f for q in requests) == expected, f
        times.append(max(r["t2"] for r in recs) - min(r["t0"] for r in recs))
    # Only the source's leader downloaded from the Hub; the other leaders received; followers nothing.
    fan = dist_ranks.phase(values, 0)
    leaders = [n * per_node for n in range(nodes)]
    assert [r["rank"] for r in fan if r["downloaded"]] == leaders
    line = f"\n[{nodes} nodes x {per_node} ranks] fan-out: Hub bytes 1.00x, all loaded in {times[0]:.2f} s"
    if baseline:
        line += (
            f"; every node downloads: Hub bytes {nodes:.2f}x, {times[1]:.2f} s "
            f"({times[0] / times[1]:.2f}x the time)"
        )
    print(line)


def test_a_callers_group_of_some_ranks(
    local_hub: Any, built_repos: Any, hf_env: dict[str, Any], tmp_path: Path
) -> None:
    """``group=``: three nodes of two ranks; every rank creates ``new_group([2, 3, 4, 5])`` (the last two
    nodes), whose ranks call ``prefetch_distributed(..., group=g)`` and load; the first node's ranks call
    nothing but the final barrier. The group's two domain leaders build their transfer subgroup among
    themselves (``use_local_synchronization``), named by their global ranks (group ranks 0 and 2 are
    global 2 and 4): rank 2 downloads, rank 4 receives from it, the Hub serves the model once, and the
    first node's cache stays empty."""
    built = built_repos["sharded"]
    model = dist_ranks.model_bytes(local_hub, built.commit)
    local_hub.set_bandwidth(model / 1.5)  # one download takes about 1.5 s
    hosts = [f"node-{n}" for n in range(3) for _ in range(2)]
    members = [2, 3, 4, 5]
    caches = _caches(tmp_path, hosts, "group")
    local_hub.reset_log()
    with _pool(_env(hf_env), tmp_path, hosts, [caches], group_ranks=members) as pool:
        pool.wait_ready()
        pool.go()
        values = dist_ranks.ok(pool.results())
    assert [len(v["phases"]) for v in values] == [0, 0, 1, 1, 1, 1]
    recs = dist_ranks.phase(values[2:], 0)
    dist_ranks.all_loaded(recs, built)
    requests = dist_ranks.window(local_hub, recs)
    assert dist_ranks.get_bytes(requests) == model  # 1.00x
    assert local_hub.bytes_served() == model  # nothing before or after the phase either
    for f in [p for p in local_hub.store.files(SHARDED, built.commit) if p.startswith(f"{SUB}/")]:
        assert sum(q.full_body and q.filename == f for q in requests) == 1, f
    # The leaders got the files (followers nothing): rank 2 from the Hub, rank 4 from rank 2.
    assert [r["rank"] for r in recs if r["downloaded"]] == [2, 4]
    received = re.compile(r"received \d+ bytes from rank")
    heard = {r["rank"]: [m for m in r["heard"] if received.search(m)] for r in recs}
    assert [(r, len(h)) for r, h in heard.items() if h] == [(4, 1)], heard
    assert heard[4][0].endswith("from rank 2"), heard
    # The first node's ranks never touched their cache.
    assert not list(Path(caches[0]["cache_dir"]).glob("models--*/snapshots/*"))
    elapsed = max(r["t2"] for r in recs) - min(r["t0"] for r in recs)
    assert elapsed < 30, elapsed
    print(f"\n[group= of ranks 2-5 of 6 (2 of 3 nodes)] Hub bytes 1.00x, the group loaded in {elapsed:.2f} s")


# ----------------------------------------------------------------------------- faults


def _fault_run(
    local_hub: Any,
    hf_env: dict[str, Any],
    tmp_path: Path,
    hosts: Sequence[str],
    *,
    victim: int | None,
    wait_shard_on: int | None = None,
    shards: int = 1,
    env: dict[str, str] | None = None,
    caches: list[dict[str, Any]] | None = None,
) -> tuple[list[Any], float, list[str]]:
    """Stall the source's download mid-shard; kill ``victim`` once the stall is seen (and, with
    ``wait_shard_on``, once that rank's node has a weight shard from a peer); then lift the stall.
    Returns the results, the time of the kill and the model files the victim's node lacked then."""
    caches = caches or _caches(tmp_path, hosts, "local")
    stall = local_hub.stall(f"*/{SHARD}", after_bytes=10_000)
    with _pool(_env(hf_env, **(env or {})), tmp_path, hosts, [caches]) as pool:
        pool.wait_ready()
        pool.go()
        _until("the source's download stalls mid-shard", lambda: _stalled(local_hub))
        if wait_shard_on is not None:
            _until(
                f"rank {wait_shard_on}'s node has received {shards} weight shard(s)",
                lambda: _shards_received(caches[wait_shard_on]["cache_dir"]) >= shards,
            )
        t_fault = time.time()
        if victim is not None:
            pool.kill(victim)
            lacking = _lacking(local_hub, caches[victim]["cache_dir"])
        local_hub.clear_fault(stall)
        results = pool.results()
    return results, t_fault, lacking if victim is not None else []


def _lacking(hub: Any, cache_dir: str) -> list[str]:
    """The model files not (yet) in a node's snapshot."""
    commit = hub.store.resolve(SHARDED, "main")
    snapshot = Path(cache_dir) / "models--tiny--sharded-bert" / "snapshots" / commit
    files = hub.store.files(SHARDED, commit)
    return [p for p in files if p.startswith(f"{SUB}/") and not (snapshot / p).exists()]


def _log(hub: Any, t0: float) -> list[tuple[Any, ...]]:
    return [
        (q.method, q.filename, q.bytes_sent, q.status, round(q.t_start - t0, 2))
        for q in hub.requests()
        if q.kind == "get"
    ]


def _survivors(results: Sequence[Any], victim: int | None) -> list[dict[str, Any]]:
    if victim is not None:
        assert results[victim].error_type == "Killed"
    return dist_ranks.phase(dist_ranks.ok([r for r in results if r.index != victim]), 0)


def test_source_killed_mid_file(
    local_hub: Any, built_repos: Any, hf_env: dict[str, Any], tmp_path: Path
) -> None:
    """The source's leader dies mid-shard: its host-mate takes over its node from the Hub; the first
    receiver finds no peer before it and downloads the rest from the Hub, still serving the chain."""
    built = built_repos["sharded"]
    hosts = ["node-a", "node-a", "node-b", "node-c"]
    # Killed while its download of shard 2 is stalled, once the first receiver holds the two other shards
    # (relayed out of order, as the source published them): shard 2 is then what the dead node and the
    # first receiver both fetch again.
    results, t_kill, lacking = _fault_run(
        local_hub, hf_env, tmp_path, hosts, victim=0, wait_shard_on=2, shards=2
    )
    recs = _survivors(results, 0)
    dist_ranks.all_loaded(recs, built)
    model = dist_ranks.model_bytes(local_hub, built.commit)
    served = local_hub.bytes_served()
    # What the dead source lacked is fetched again by its own node and by the first receiver, nothing
    # else: the model once (the Hub's log counts the source's stalled shard whole) + twice the lack.
    sizes = local_hub.store.files(SHARDED, built.commit)
    again = sum(sizes[p].size for p in lacking)
    assert served <= model + 2 * again, (served, model, lacking, _log(local_hub, t_kill))
    assert served <= 2.1 * model, (served, model)
    finished = max(r["t2"] for r in recs) - t_kill
    assert finished < 2 * TTL + 30
    print(
        f"\n[source killed] Hub bytes {served / model:.2f}x (the source lacked {again / model:.2f}x); "
        f"all survivors loaded {finished:.1f} s after the kill"
    )


@pytest.mark.parametrize(
    ("hosts", "victim", "wait_shard_on", "label"),
    [
        # The first receiver dies after it has relayed a file: the next leader resumes from the source,
        # the dead relay's host-mate takes its node over from the Hub.
        (["node-a", "node-b", "node-b", "node-c"], 1, 3, "relay killed"),
        # The last receiver dies mid-transfer: nobody else waits for it; its host-mate downloads its node.
        (["node-a", "node-b", "node-c", "node-c"], 2, 2, "receiver killed"),
    ],
    ids=["relay", "receiver"],
)
def test_a_killed_relay_or_receiver_costs_at_most_one_more_download(
    local_hub: Any,
    built_repos: Any,
    hf_env: dict[str, Any],
    tmp_path: Path,
    hosts: list[str],
    victim: int,
    wait_shard_on: int,
    label: str,
) -> None:
    """A leader in the chain is killed once a node after the source holds a shard: every survivor loads,
    within the TTL's bounds, and the Hub serves at most twice the model."""
    built = built_repos["sharded"]
    results, t_kill, _lack = _fault_run(
        local_hub, hf_env, tmp_path, hosts, victim=victim, wait_shard_on=wait_shard_on
    )
    recs = _survivors(results, victim)
    dist_ranks.all_loaded(recs, built)
    model = dist_ranks.model_bytes(local_hub, built.commit)
    served = local_hub.bytes_served()
    assert served <= 2 * model, (served, model)
    finished = max(r["t2"] for r in recs) - t_kill
    assert finished < 2 * TTL + 30
    print(f"\n[{label}] Hub bytes {served / model:.2f}x; survivors loaded {finished:.1f} s after the kill")


def test_a_split_download_is_relayed_before_it_is_published(
    local_hub: Any, built_repos: Any, hf_env: dict[str, Any], tmp_path: Path
) -> None:
    """The source's engine splits each shard into ranges of 192 KiB (``HUB_PREFETCH_PART_SIZE``), written
    out of order by several connections. One range of the shard stalls at the Hub after 150 kB: the source
    cannot publish that shard, yet the next node already holds its front (the contiguous prefix the
    ``.parts`` record tells); once the stall is lifted every rank loads, from one Hub download."""
    built = built_repos["sharded"]
    hosts = ["node-a", "node-b", "node-c"]
    caches = _caches(tmp_path, hosts, "split")
    entry = local_hub.store.files(SHARDED, built.commit)[SHARD]
    repo = [Path(c["cache_dir"]) / "models--tiny--sharded-bert" for c in caches]
    source_record = repo[0] / ".hub_prefetch" / "partial" / f"{entry.sha256}.parts"
    received = repo[1] / ".hub_prefetch" / "partial" / entry.sha256
    published = repo[0] / "blobs" / entry.sha256
    part = 192 << 10
    assert entry.size >= 2 * part, entry.size  # it is split
    local_hub.reset_log()
    stall = local_hub.stall(f"*/{SHARD}", after_bytes=150_000)
    with _pool(_env(hf_env, HUB_PREFETCH_PART_SIZE=str(part)), tmp_path, hosts, [caches]) as pool:
        pool.wait_ready()
        pool.go()
        _until("the source's download stalls in a range of the shard", lambda: _stalled(local_hub))
        _until(
            "the next node holds the front of the stalled shard",
            # The front is at least 150 kB: the source sends whole 64 KiB chunks of a file in progress.
            lambda: received.exists() and received.stat().st_size >= 2 * (64 << 10),
        )
        front = received.stat().st_size
        assert source_record.exists() and not published.exists()
        local_hub.clear_fault(stall)
        recs = dist_ranks.phase(dist_ranks.ok(pool.results()), 0)
    dist_ranks.all_loaded(recs, built)
    model = dist_ranks.model_bytes(local_hub, built.commit)
    assert dist_ranks.get_bytes(dist_ranks.window(local_hub, recs)) == model
    print(f"\n[split download] the next node had {front} of {entry.size} bytes before the source published")


def test_error_corrupt_chunk_and_read_only_node(
    local_hub: Any, built_repos: Any, hf_env: dict[str, Any], tmp_path: Path
) -> None:
    """Three phases of one job of three nodes (the first with two ranks):

    1. the Hub refuses the source a shard (403): every rank of every node raises the same typed error,
       at once (the source's ABORT travels down the chain; followers read their leader's outcome);
    2. the source flips a byte of a shard it sends (its test knob): the first receiver's digest catches
       it, it takes that one file from the Hub and has the next leader take it again; nothing corrupt is
       published anywhere;
    3. the middle node's cache is complete and read-only (a read-only bind mount, root included): it
       writes nothing, loads, and still serves the next node from its disk.
    """
    from _faultkit import read_only_view

    built = built_repos["sharded"]
    hosts = ["node-a", "node-a", "node-b", "node-c"]
    refused = [{**c, "env": {FAULT: ""}} for c in _caches(tmp_path, hosts, "refused")]
    corrupt = [{**c, "env": {FAULT: f"corrupt:0:{SHARD}"}} for c in _caches(tmp_path, hosts, "corrupt")]
    read_only = [{**c, "env": {FAULT: ""}} for c in _caches(tmp_path, hosts, "ro")]
    hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=read_only[2]["cache_dir"])
    local_hub.reset_log()
    local_hub.fail(f"/{SHARDED}/resolve/*/{SHARD}", method="GET", status=403, count=1)
    with read_only_view(Path(read_only[2]["cache_dir"])) as mounted:
        phases = [refused, corrupt, read_only] if mounted else [refused, corrupt]
        with _pool(_env(hf_env), tmp_path, hosts, phases) as pool:
            pool.wait_ready()
            pool.go()
            values = dist_ranks.ok(pool.results())
    model = dist_ranks.model_bytes(local_hub, built.commit)

    recs = dist_ranks.phase(values, 0)
    assert {r["error_type"] for r in recs} == {"GatedRepoError"}, recs
    assert len({r["error"] for r in recs}) == 1
    spread = max(r["t1"] for r in recs) - min(r["t1"] for r in recs)
    assert spread < TTL, spread
    print(f"\n[403 at the source] GatedRepoError on all {len(recs)} ranks within {spread:.2f} s")

    recs = dist_ranks.phase(values, 1)
    dist_ranks.all_loaded(recs, built)
    requests = dist_ranks.window(local_hub, recs)
    served = dist_ranks.get_bytes(requests)
    shard = local_hub.store.files(SHARDED, built.commit)[SHARD].size
    assert served == model + shard, (served, model, shard)
    assert sum(q.full_body and q.filename == SHARD for q in requests) == 2
    for c in corrupt:
        report = hub_prefetch.verify(SHARDED, [SUB], cache_dir=c["cache_dir"], deep=True)
        assert report.ok, str(report)
    print(f"[chunk corrupted] Hub bytes {served / model:.2f}x (the model + the one shard again)")

    if not mounted:
        print("[read-only node] not run: a read-only bind mount needs root")
        return
    recs = dist_ranks.phase(values, 2)
    dist_ranks.all_loaded(recs, built)
    assert dist_ranks.get_bytes(dist_ranks.window(local_hub, recs)) == model
    assert [r["rank"] for r in recs if r["downloaded"]] == [0, 3]
    print("[read-only node] Hub bytes 1.00x; the read-only node served the next one from its disk")


# ----------------------------------------------------------------------------- real links


def _links_refused() -> str | None:
    from hub_prefetch.testing.netns import refused

    return refused()


@pytest.mark.skipif(_links_refused() is not None, reason=f"no network namespaces: {_links_refused()}")
def test_nodes_behind_rate_limited_links(
    hub_store: Any, built_repos: Any, hf_env: dict[str, Any], tmp_path: Path
) -> None:
    """Four nodes, each in its own network namespace behind a veth pair limited by tc to 1 MB/s each way,
    the Hub's uplink limited to the same rate. Every node downloading shares that uplink four ways; the
    fan-out costs about one download plus a chunk per hop: the source forwards its engine's partial
    files as they grow, and each relay forwards a chunk as soon as it has it. (Bounds only: the speed is
    measured in ``benchmarks/fanout.py --link-mbit``.)"""
    from hub_prefetch.testing import LocalHub
    from hub_prefetch.testing.netns import links

    built = built_repos["sharded"]
    nodes, rate = 4, 1_000_000.0
    hosts = [f"node-{i}" for i in range(nodes)]
    phases = [
        _caches(tmp_path, hosts, "fanout"),
        [{**c, "fanout": False} for c in _caches(tmp_path, hosts, "each")],
    ]
    with links(nodes, rate_mbit=rate * 8 / 1e6) as net:
        hub = LocalHub(hub_store, host=net.hub_ip).start()
        try:
            hub.set_bandwidth(rate)
            with _pool(
                _env(hf_env, HF_ENDPOINT=hub.url), tmp_path, hosts, phases, netns=net.namespaces
            ) as pool:
                pool.wait_ready()
                pool.go()
                values = dist_ranks.ok(pool.results())
            model = dist_ranks.model_bytes(hub, built.commit)
            figures = []
            for i, expected in enumerate([1, nodes]):
                recs = dist_ranks.phase(values, i)
                dist_ranks.all_loaded(recs, built)
                requests = dist_ranks.window(hub, recs)
                assert dist_ranks.get_bytes(requests) == expected * model
                gets = [q for q in requests if q.kind == "get"]
                download = max(q.t_end or q.t_start for q in gets) - min(q.t_start for q in gets)
                ready = max(r["t1"] for r in recs) - min(r["t0"] for r in recs)
                figures.append((download, ready))
        finally:
            hub.stop()
    (one, fan), (_, each) = figures
    print(
        f"\n[{nodes} nodes behind {rate / 1e6:g} MB/s links] one Hub download {one:.2f} s; "
        f"files on every rank: fan-out {fan:.2f} s ({fan / one:.2f}x), "
        f"every node downloads {each:.2f} s ({each / one:.2f}x)"
    )
    # Bounded, not a benchmark: one download + one upload of the model + the hops, against N downloads.
    hops = (nodes - 1) * (256 << 10) / rate
    assert fan < 2 * one + hops + 2.0, figures
    assert each > 0.9 * nodes * one, figures
    assert fan < each, figures
