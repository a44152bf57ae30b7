"""Every LocalHub fault knob, shown to act on a real huggingface_hub download (both stacks).

Where huggingface_hub 1.x and 2.x react differently, the test asserts what each one does.
Timing assertions are lower bounds only (a throttle or a delay can only make things slower).
"""

from __future__ import annotations

import functools
import http.client
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import torch
from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError
from safetensors.torch import save_file

from hub_prefetch.testing import LocalHub, RequestRecord
from hub_prefetch.testing.store import RepoStore

REPO = "org/faulty"
WEIGHTS = "model.safetensors"
GLOB = f"*/resolve/*/{WEIGHTS}"
HF_MAJOR = int(huggingface_hub.__version__.split(".")[0])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> RepoStore:
    root = tmp_path_factory.mktemp("store")
    src = tmp_path_factory.mktemp("src") / WEIGHTS
    save_file({"w": torch.randn(300_000, generator=torch.Generator().manual_seed(0))}, str(src))
    store = RepoStore(root)
    store.commit(REPO, {"config.json": '{"hidden": 8}', WEIGHTS: src, "sub/a.txt": "a"})
    return store


@pytest.fixture(scope="module")
def module_hub(store: RepoStore) -> Iterator[LocalHub]:
    with LocalHub(store) as hub:
        yield hub


@pytest.fixture
def hub(module_hub: LocalHub) -> Iterator[LocalHub]:
    module_hub.clear_faults()
    module_hub.reset_log()
    yield module_hub
    module_hub.clear_faults()


@pytest.fixture
def weights(store: RepoStore) -> bytes:
    commit = store.resolve(REPO, "main")
    assert commit is not None
    return store.read(REPO, commit, WEIGHTS)


def download(hub: LocalHub, cache: Path, filename: str = WEIGHTS) -> Path:
    return Path(hf_hub_download(REPO, filename, endpoint=hub.url, cache_dir=cache))


def records(hub: LocalHub, kind: str, filename: str = WEIGHTS) -> list[RequestRecord]:
    return [r for r in hub.requests() if r.kind == kind and r.filename == filename]


def wait_for(predicate: Callable[[], bool], timeout: float = 20) -> None:
    """Poll a condition the server reports (not a sleep-and-hope: the condition is the event)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.01)


class Background:
    """Run a call in a thread; keep its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as err:
            self.error = err

    def join(self, timeout: float = 30) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "background call did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def raw_get(url: str) -> tuple[int, bytes]:
    """A plain GET that reports a cut body as IncompleteRead instead of retrying."""
    host, port = url.split("//")[1].split("/", maxsplit=1)[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", "/" + url.split("//")[1].split("/", 1)[1])
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# -- fail -------------------------------------------------------------------------------------------


def test_head_503_is_retried_by_the_client(hub: LocalHub, weights: bytes, tmp_path: Path) -> None:
    hub.fail(GLOB, method="HEAD", status=503)
    assert download(hub, tmp_path).read_bytes() == weights
    assert [r.status for r in records(hub, "head")] == [503, 200]
    assert hub.times_served(WEIGHTS) == 1


def test_get_503_surfaces_and_only_matching_requests_fail(
    hub: LocalHub, weights: bytes, tmp_path: Path
) -> None:
    hub.fail(GLOB, method="GET", status=503, count=1)
    # The glob names one file: others are served.
    assert download(hub, tmp_path / "a", "config.json").read_text() == '{"hidden": 8}'
    with pytest.raises(HfHubHTTPError) as err:  # huggingface_hub does not retry a 503 on the body GET
        download(hub, tmp_path / "a")
    assert err.value.response is not None and err.value.response.status_code == 503
    assert download(hub, tmp_path / "a").read_bytes() == weights  # count=1: the next one is served
    assert [r.status for r in records(hub, "get")] == [503, 200]


def test_fail_count_two_costs_two_retries(hub: LocalHub, weights: bytes, tmp_path: Path) -> None:
    hub.fail(GLOB, method="HEAD", status=502, count=2)
    t0 = time.monotonic()
    assert download(hub, tmp_path).read_bytes() == weights
    assert [r.status for r in records(hub, "head")] == [502, 502, 200]
    # The second failure is met by the client's backoff (1 s in both stacks).
    assert time.monotonic() - t0 >= 0.9


def test_429_with_retry_after_is_honoured(hub: LocalHub, weights: bytes, tmp_path: Path) -> None:
    hub.fail(GLOB, method="GET", status=429, retry_after=2)
    assert download(hub, tmp_path).read_bytes() == weights
    limited, served = records(hub, "get")
    assert (limited.status, served.status) == (429, 200)
    assert limited.t_end is not None
    # huggingface_hub waits Retry-After (2.x) or the RateLimit reset (1.x), plus one second.
    assert served.t_start - limited.t_end >= 2.0


def test_fail_answers_carry_retry_after(hub: LocalHub) -> None:
    hub.fail(GLOB, status=429, retry_after=7)
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)
    conn.request("HEAD", f"/{REPO}/resolve/main/{WEIGHTS}")
    resp = conn.getresponse()
    conn.close()
    assert resp.status == 429
    assert resp.getheader("Retry-After") == "7"
    assert resp.getheader("RateLimit") == '"api";r=0;t=7'


# -- drop_after, stall ------------------------------------------------------------------------------


def test_drop_after_cuts_the_body(hub: LocalHub, weights: bytes, tmp_path: Path) -> None:
    hub.drop_after(GLOB, 100_000)
    with pytest.raises(http.client.IncompleteRead) as cut:
        raw_get(f"{hub.url}/{REPO}/resolve/main/{WEIGHTS}")
    assert len(cut.value.partial) == 100_000
    first = records(hub, "get")[0]
    assert (first.bytes_sent, first.complete, first.fault) == (100_000, False, "drop")

    hub.reset_log()
    hub.drop_after(GLOB, 100_000)
    if HF_MAJOR >= 2:
        # 2.x retries a body cut mid-way (from 0 here: it had not flushed a 10 MB chunk yet).
        assert download(hub, tmp_path).read_bytes() == weights
        got = records(hub, "get")
        assert [(r.bytes_sent, r.complete) for r in got] == [(100_000, False), (len(weights), True)]
    else:
        # 1.x gives up on the first cut.
        import httpx

        with pytest.raises(httpx.RemoteProtocolError):
            download(hub, tmp_path)
        assert [(r.bytes_sent, r.complete) for r in records(hub, "get")] == [(100_000, False)]
    assert hub.bytes_served(WEIGHTS) == sum(r.bytes_sent for r in records(hub, "get"))


def test_stall_holds_the_body_until_cleared(hub: LocalHub, weights: bytes, tmp_path: Path) -> None:
    fault = hub.stall(GLOB, after_bytes=200_000)
    job = Background(lambda: download(hub, tmp_path))
    wait_for(lambda: any(r.fault == "stall" for r in records(hub, "get")))
    (stalled,) = records(hub, "get")
    assert stalled.bytes_sent == 200_000 and stalled.t_end is None
    assert job.thread.is_alive()
    hub.clear_fault(fault)
    assert job.join().read_bytes() == weights
    (done,) = records(hub, "get")  # resumed on the same response: no retry was needed
    assert done.complete and done.bytes_sent == len(weights)


def test_stall_is_cut_when_the_hub_stops(store: RepoStore) -> None:
    hub = LocalHub(store).start()
    hub.stall(GLOB, after_bytes=1000)
    job = Background(lambda: raw_get(f"{hub.url}/{REPO}/resolve/main/{WEIGHTS}"))
    wait_for(lambda: any(r.fault == "stall" for r in hub.requests()))
    t0 = time.monotonic()
    hub.stop()
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        job.join()
    assert time.monotonic() - t0 < 10


# -- hold -------------------------------------------------------------------------------------------


def test_hold_forces_an_interleaving(hub: LocalHub, weights: bytes, tmp_path: Path) -> None:
    hold = hub.hold(GLOB)
    parked = Background(lambda: download(hub, tmp_path / "a"))
    hold.wait_arrived(1, timeout=20)
    # While the weights are parked, another download runs start to end.
    assert download(hub, tmp_path / "b", "config.json").read_text() == '{"hidden": 8}'
    (waiting,) = records(hub, "get")
    assert waiting.t_end is None and waiting.bytes_sent == 0 and parked.thread.is_alive()
    hold.release()
    assert parked.join().read_bytes() == weights
    (config_get,) = records(hub, "get", "config.json")
    (weights_get,) = records(hub, "get")
    assert config_get.t_end is not None and weights_get.t_end is not None
    assert config_get.t_end < weights_get.t_end
    # Released: later matches are not parked.
    assert download(hub, tmp_path / "c").read_bytes() == weights


def test_hold_by_method_and_arrival_timeout(hub: LocalHub, tmp_path: Path) -> None:
    hold = hub.hold(GLOB, method="HEAD", count=2)
    jobs = [Background(functools.partial(download, hub, tmp_path / str(i))) for i in range(2)]
    hold.wait_arrived(2, timeout=20)
    assert hub.counts()["get"] == 0  # nobody got past the HEAD
    hold.release()
    for job in jobs:
        job.join()
    lonely = hub.hold("*/never/*")
    with pytest.raises(TimeoutError):
        lonely.wait_arrived(1, timeout=0.2)


# -- corrupt ----------------------------------------------------------------------------------------


def test_corrupt_flip_changes_one_byte(hub: LocalHub, weights: bytes, tmp_path: Path) -> None:
    hub.corrupt(GLOB, mode="flip")
    got = download(hub, tmp_path / "a").read_bytes()
    # huggingface_hub does not check the sha256 it was given as ETag: the flipped byte lands in the cache.
    assert len(got) == len(weights)
    assert [i for i in range(len(got)) if got[i] != weights[i]] == [len(weights) // 2]
    assert download(hub, tmp_path / "b").read_bytes() == weights  # count=1


def test_corrupt_truncate_fails_the_size_check(hub: LocalHub, weights: bytes, tmp_path: Path) -> None:
    hub.corrupt(GLOB, mode="truncate")
    with pytest.raises(OSError, match="Consistency check failed"):
        download(hub, tmp_path)
    (short,) = records(hub, "get")
    assert (short.bytes_sent, short.complete, short.fault) == (len(weights) // 2, False, "truncate")
    assert not list(tmp_path.glob(f"models--*/snapshots/*/{WEIGHTS}"))


# -- bandwidth, latency -----------------------------------------------------------------------------


def test_bandwidth_limits_one_download(hub: LocalHub, weights: bytes, tmp_path: Path) -> None:
    rate = 2_000_000.0
    hub.set_bandwidth(rate, shared=False)
    t0 = time.monotonic()
    assert download(hub, tmp_path).read_bytes() == weights
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.95 * len(weights) / rate
    (get,) = records(hub, "get")
    assert get.t_end is not None and get.t_end - get.t_start >= 0.95 * len(weights) / rate


def test_shared_bandwidth_is_one_link(hub: LocalHub, weights: bytes, tmp_path: Path) -> None:
    rate = 4_000_000.0
    hub.set_bandwidth(rate, shared=True)
    hold = hub.hold(GLOB, count=2)  # both bodies start together
    jobs = [Background(functools.partial(download, hub, tmp_path / str(i))) for i in range(2)]
    hold.wait_arrived(2)
    t0 = time.monotonic()
    hold.release()
    for job in jobs:
        assert job.join().read_bytes() == weights
    # Two bodies through one link take at least twice as long as one.
    assert time.monotonic() - t0 >= 0.95 * 2 * len(weights) / rate
    hub.set_bandwidth(None)
    assert download(hub, tmp_path / "free").read_bytes() == weights


def test_metadata_latency_delays_every_metadata_call(hub: LocalHub, tmp_path: Path) -> None:
    hub.set_metadata_latency(0.3)
    t0 = time.monotonic()
    folder = snapshot_download(REPO, endpoint=hub.url, cache_dir=tmp_path)
    elapsed = time.monotonic() - t0
    assert (Path(folder) / "config.json").is_file()
    meta = [r for r in hub.requests() if r.kind in ("revision", "tree", "head")]
    assert meta and all(r.t_end is not None and r.t_end - r.t_start >= 0.3 for r in meta)
    assert elapsed >= 0.3 * 2  # at least the revision call and one HEAD, one after the other


# -- knob plumbing ----------------------------------------------------------------------------------


def test_knobs_set_before_start_apply_and_clear(store: RepoStore, tmp_path: Path) -> None:
    hub = LocalHub(store)
    gone = hub.fail(GLOB, method="GET", status=500)
    hub.clear_fault(gone)
    hub.fail(GLOB, method="GET", status=500, count=-1)  # every matching request
    with hub:
        for _ in range(2):
            with pytest.raises(HfHubHTTPError):
                download(hub, tmp_path)
        hub.clear_faults()
        assert download(hub, tmp_path).stat().st_size > 0
        assert [r.status for r in records(hub, "get")] == [500, 500, 200]
