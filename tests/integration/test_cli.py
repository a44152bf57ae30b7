"""The CLI through its real entry points (``python -m hub_prefetch.cli`` and the ``hub-prefetch`` script),
against the session's local Hub: success, failure and ``--json`` for every command, and the exit codes."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from hub_prefetch import cli
from hub_prefetch.testing.pytest_plugin import GATED_TOKEN

SCRIPT = Path(sys.executable).with_name("hub-prefetch")
REPO = "tiny/sharded-bert"
SUB = "text_encoder"
FAST_RETRIES = {
    "HUB_PREFETCH_MAX_ATTEMPTS": "2",
    "HUB_PREFETCH_BACKOFF": "0.01",
    "HUB_PREFETCH_BACKOFF_MAX": "0.05",
}


def _env(base: Mapping[str, Any], **extra: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in {**base, **extra}.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def run_cli(
    *args: str, env: Mapping[str, Any], script: bool = False, timeout: float = 120, **extra: str | None
) -> subprocess.CompletedProcess[str]:
    cmd = [str(SCRIPT)] if script else [sys.executable, "-m", "hub_prefetch.cli"]
    return subprocess.run(
        [*cmd, *args], env=_env(env, **extra), capture_output=True, text=True, timeout=timeout, check=False
    )


def as_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"not JSON (exit {proc.returncode}):\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return data


def needed_files(built: Any) -> set[str]:
    return {f for f in built.files if f.startswith(f"{SUB}/")}


@pytest.fixture
def warm_snapshot(hf_env: dict[str, Any], built_repos: dict[str, Any]) -> Path:
    proc = run_cli("warm", REPO, "-s", SUB, "--json", env=hf_env)
    assert proc.returncode == 0, proc.stderr
    return Path(as_json(proc)["snapshot_path"])


class LockHolder:
    """A separate process holding a repo lock until released (or killed)."""

    CODE = (
        "import sys\n"
        "from hub_prefetch.lock import RepoLock\n"
        "lock = RepoLock(sys.argv[1], sys.argv[2], backend=sys.argv[3])\n"
        "lock.acquire()\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
        "lock.release()\n"
    )

    def __init__(self, cache: Path, repo: str, backend: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.CODE, str(cache), repo, backend],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def holder(hf_cache: Path) -> Iterator[Any]:
    holders: list[LockHolder] = []

    def make(backend: str = "flock", repo: str = REPO) -> LockHolder:
        holders.append(LockHolder(hf_cache, repo, backend))
        return holders[-1]

    yield make
    for h in holders:
        h.close()


# ------------------------------------------------------------------------------------------ parsing


def test_help_names_every_command_example_and_exit_code() -> None:
    proc = run_cli("--help", env={}, script=True)
    assert proc.returncode == 0
    for command in ("warm", "verify", "repair", "locks", "demo"):
        assert command in proc.stdout
        sub = run_cli(command, "--help", env={})
        assert sub.returncode == 0, sub.stderr
        assert "examples:" in sub.stdout
        assert "--json" in sub.stdout
    for code in (
        cli.EXIT_OK,
        cli.EXIT_VERIFY_FAILED,
        cli.EXIT_USAGE,
        cli.EXIT_LOCK_TIMEOUT,
        cli.EXIT_HUB_ERROR,
    ):
        assert f"  {code}  " in proc.stdout


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("warm",),
        ("warm", REPO, "--bogus"),
        ("demo", "--workers", "0"),
        ("demo", "--fault", "meteor"),
        ("demo", "--scenario", "meteor"),
        ("warm", "../etc"),
        ("warm", REPO, "-s", "../secrets"),
        ("locks", "a/b/c"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...], hf_env: dict[str, Any]) -> None:
    proc = run_cli(*args, env=hf_env)
    assert proc.returncode == cli.EXIT_USAGE, (proc.stdout, proc.stderr)
    assert proc.stderr.strip()
    as_json_proc = run_cli(*args, "--json", env=hf_env)
    assert as_json_proc.returncode == cli.EXIT_USAGE
    data = as_json(as_json_proc)
    assert data["ok"] is False
    assert data["exit_code"] == cli.EXIT_USAGE
    assert data["error"]["message"]


# ------------------------------------------------------------------------------------------ warm


def test_warm_prints_commit_files_bytes_time_then_is_warm(
    hf_env: dict[str, Any], built_repos: dict[str, Any], local_hub: Any
) -> None:
    built = built_repos["sharded"]
    proc = run_cli("warm", REPO, "--subfolder", SUB, env=hf_env, script=True)
    assert proc.returncode == 0, proc.stderr
    assert built.commit in proc.stdout
    assert f"files     {len(needed_files(built))} " in proc.stdout
    assert "time" in proc.stdout
    assert "%|" not in proc.stderr and "it/s" not in proc.stderr  # no per-file progress bars
    for path in needed_files(built):
        assert local_hub.times_served(path) == 1
    local_hub.reset_log()
    again = run_cli("warm", REPO, "--subfolder", SUB, env=hf_env)
    assert again.returncode == 0
    assert "already warm" in again.stdout
    assert local_hub.requests() == []


def test_warm_json(hf_env: dict[str, Any], built_repos: dict[str, Any], hf_cache: Path) -> None:
    built = built_repos["sharded"]
    data = as_json(run_cli("warm", REPO, "-s", SUB, "--json", env=hf_env))
    assert data["ok"] is True
    assert data["exit_code"] == 0
    assert data["commit"] == built.commit
    assert needed_files(built) <= set(data["files"])
    assert data["bytes_total"] == data["bytes_downloaded"] > 0
    assert data["warm"] is False
    assert Path(data["snapshot_path"]).is_relative_to(hf_cache)
    assert all((Path(data["snapshot_path"]) / f).is_file() for f in data["files"])


@pytest.mark.parametrize(
    ("args", "code", "error"),
    [
        (("warm", "tiny/no-such-repo"), cli.EXIT_HUB_ERROR, "RepoNotFound"),
        (("warm", REPO, "-r", "no-such-branch"), cli.EXIT_HUB_ERROR, "RevisionNotFound"),
        (("warm", "tiny/gated"), cli.EXIT_HUB_ERROR, "GatedRepoError"),
        (("warm", REPO, "-s", "no_such_subfolder"), cli.EXIT_USAGE, "UnknownSubfolderError"),
    ],
)
def test_warm_failures_have_typed_errors_and_exit_codes(
    args: tuple[str, ...], code: int, error: str, hf_env: dict[str, Any], built_repos: dict[str, Any]
) -> None:
    proc = run_cli(*args, env=hf_env)
    assert proc.returncode == code, proc.stderr
    assert error in proc.stderr
    data = as_json(run_cli(*args, "--json", env=hf_env))
    assert data["exit_code"] == code
    assert data["error"]["type"] == error


def test_warm_gated_with_token(hf_env: dict[str, Any], built_repos: dict[str, Any]) -> None:
    data = as_json(run_cli("warm", "tiny/gated", "--token", GATED_TOKEN, "--json", env=hf_env))
    assert data["ok"] is True
    assert data["commit"] == built_repos["gated"].commit


def test_warm_hub_down_exits_4(hf_env: dict[str, Any], built_repos: dict[str, Any], local_hub: Any) -> None:
    local_hub.fail("/api/*", status=503, count=-1)
    proc = run_cli("warm", REPO, "-s", SUB, "--json", env={**hf_env, **FAST_RETRIES})
    assert proc.returncode == cli.EXIT_HUB_ERROR
    assert as_json(proc)["error"]["type"] == "HubUnavailableError"


def test_warm_offline_and_cold_exits_4(hf_env: dict[str, Any], built_repos: dict[str, Any]) -> None:
    proc = run_cli("warm", REPO, "-s", SUB, "--json", env=hf_env, HF_HUB_OFFLINE="1")
    assert proc.returncode == cli.EXIT_HUB_ERROR
    assert as_json(proc)["error"]["type"] == "OfflineCacheMissError"


def test_warm_times_out_on_a_held_lock_with_exit_3(
    hf_env: dict[str, Any], built_repos: dict[str, Any], holder: Any
) -> None:
    h = holder("flock")
    proc = run_cli("warm", REPO, "-s", SUB, "--lock-timeout", "0.5", "--json", env=hf_env)
    assert proc.returncode == cli.EXIT_LOCK_TIMEOUT, proc.stderr
    error = as_json(proc)["error"]
    assert error["type"] == "LockTimeout"
    assert error["facts"]["holder"]["pid"] == h.proc.pid
    h.release()
    assert run_cli("warm", REPO, "-s", SUB, "--lock-timeout", "30", env=hf_env).returncode == 0


@pytest.fixture
def cli_logging() -> Iterator[None]:
    """``cli.main`` in this process configures the ``hub_prefetch`` logger; put it back afterwards."""
    logger = logging.getLogger("hub_prefetch")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def test_main_in_process_leaves_os_environ_alone(
    hf_env: dict[str, Any],
    built_repos: dict[str, Any],
    holder: Any,
    monkeypatch: pytest.MonkeyPatch,
    cli_logging: None,
) -> None:
    # --lock-timeout reaches the library in the Settings the CLI passes, and the progress bars are turned
    # off in-process: an in-process caller of cli.main finds os.environ as it left it.
    for key, value in hf_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HUB_PREFETCH_LOCK_TIMEOUT", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    before = dict(os.environ)
    h = holder("flock")
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["warm", REPO, "-s", SUB, "--lock-timeout", "0.5", "--json"], out=out, err=err)
    assert code == cli.EXIT_LOCK_TIMEOUT, out.getvalue() + err.getvalue()
    assert json.loads(out.getvalue())["error"]["facts"]["holder"]["pid"] == h.proc.pid
    assert dict(os.environ) == before
    h.release()
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["warm", REPO, "-s", SUB, "--lock-timeout", "5", "--json"], out=out, err=err)
    assert code == cli.EXIT_OK, out.getvalue() + err.getvalue()
    assert json.loads(out.getvalue())["warm"] is False
    assert dict(os.environ) == before


def test_progress_line_shows_lock_wait_and_bytes(
    hf_env: dict[str, Any], built_repos: dict[str, Any], holder: Any, local_hub: Any
) -> None:
    h = holder("flock")
    local_hub.set_bandwidth(1_000_000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub_prefetch.cli", "warm", REPO, "-s", SUB, "--progress", "always"],
        env=_env(hf_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # The waiter's first "waiting for" record reaches the status line at once; release after it shows.
        assert proc.stderr is not None
        seen = b""
        while f"held by {os.uname().nodename}:{h.proc.pid}".encode() not in seen:
            chunk = proc.stderr.read(1)
            assert chunk, f"no status line before exit: {seen!r}"
            seen += chunk
        h.release()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    text = (seen + err).decode()
    assert f"warm {REPO}@main: waiting for {REPO}@main: held by" in text
    # The engine's bytes of the total, rate and time left while downloading, on the same single line.
    assert re.search(r"[\d.]+ [kM]?B of [\d.]+ [kM]B \([\d.]+ [kM]?B/s\)", text), text
    assert "\r" in text and "\n" not in text.rstrip("\n")  # redrawn in place, never scrolled
    assert "warmed" in out.decode()
    assert "%|" not in text


def test_no_progress_line_when_not_a_terminal(hf_env: dict[str, Any], built_repos: dict[str, Any]) -> None:
    proc = run_cli("warm", REPO, "-s", SUB, env=hf_env)
    assert proc.returncode == 0
    assert "\r" not in proc.stderr
    assert proc.stderr == ""


# ------------------------------------------------------------------------------------------ verify / repair


def _blob(snapshot: Path, path: str) -> Path:
    return Path(os.path.realpath(snapshot / path))


def break_cache(snapshot: Path, built: Any) -> dict[str, str]:
    """One problem of each kind; returns path -> kind."""
    shards = sorted(f for f in needed_files(built) if f.endswith(".safetensors"))
    flipped = _blob(snapshot, shards[0])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.chmod(0o644)
    flipped.write_bytes(bytes(data))
    truncated = _blob(snapshot, shards[1])
    truncated.chmod(0o644)
    with truncated.open("r+b") as fh:
        fh.truncate(100)
    _blob(snapshot, f"{SUB}/config.json").unlink()
    (snapshot / shards[2]).unlink()
    return {shards[0]: "hash", shards[1]: "size", f"{SUB}/config.json": "dangling", shards[2]: "missing"}


def test_verify_ok_then_reports_each_problem_kind(
    warm_snapshot: Path, hf_env: dict[str, Any], built_repos: dict[str, Any], local_hub: Any
) -> None:
    ok = run_cli("verify", REPO, "-s", SUB, "--deep", env=hf_env, script=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "all verified (sha256)" in ok.stdout
    broken = break_cache(warm_snapshot, built_repos["sharded"])
    local_hub.reset_log()
    proc = run_cli("verify", REPO, "-s", SUB, "--deep", env=hf_env)
    assert proc.returncode == cli.EXIT_VERIFY_FAILED
    for path, kind in broken.items():
        assert f"{kind:8s} {path}" in proc.stdout
    assert f"hub-prefetch repair {REPO} -s {SUB}" in proc.stdout
    data = as_json(run_cli("verify", REPO, "-s", SUB, "--deep", "--json", env=hf_env))
    assert data["ok"] is False
    assert data["exit_code"] == cli.EXIT_VERIFY_FAILED
    assert {p["path"]: p["kind"] for p in data["problems"]} == broken
    shallow = as_json(run_cli("verify", REPO, "-s", SUB, "--json", env=hf_env))
    assert {p["path"] for p in shallow["problems"]} == {p for p, k in broken.items() if k != "hash"}
    assert [r for r in local_hub.requests() if r.kind == "get"] == []  # verify downloads nothing


def test_repair_fixes_exactly_what_verify_reports(
    warm_snapshot: Path, hf_env: dict[str, Any], built_repos: dict[str, Any], local_hub: Any
) -> None:
    built = built_repos["sharded"]
    broken = break_cache(warm_snapshot, built)
    local_hub.reset_log()
    data = as_json(run_cli("repair", REPO, "-s", SUB, "--json", env=hf_env, script=True))
    assert data["ok"] is True
    assert data["exit_code"] == 0
    assert set(data["fixed"]) == set(broken)
    # Bad content is fetched again, once; a missing link to an intact blob is only relinked.
    refetched = {p for p, kind in broken.items() if kind != "missing"}
    for path in needed_files(built):
        assert local_hub.times_served(path) == (1 if path in refetched else 0), path
    assert run_cli("verify", REPO, "-s", SUB, "--deep", env=hf_env).returncode == 0
    again = run_cli("repair", REPO, "-s", SUB, env=hf_env)
    assert again.returncode == 0
    assert "nothing to repair" in again.stdout


def test_repair_failure_exit_code(hf_env: dict[str, Any], built_repos: dict[str, Any]) -> None:
    proc = run_cli("repair", "tiny/no-such-repo", "--json", env=hf_env)
    assert proc.returncode == cli.EXIT_HUB_ERROR
    assert as_json(proc)["error"]["type"] == "RepoNotFound"


# ------------------------------------------------------------------------------------------ locks


def test_locks_empty_held_free_and_stale(
    hf_env: dict[str, Any], built_repos: dict[str, Any], holder: Any, hf_cache: Path
) -> None:
    empty = run_cli("locks", env=hf_env, script=True)
    assert empty.returncode == 0
    assert "no repo locks" in empty.stdout
    assert as_json(run_cli("locks", "--json", env=hf_env))["locks"] == []

    held = holder("flock")
    stale = holder("lease", repo="tiny/root-bert")
    stale.kill()  # died holding its lease: on this host, stale at once (its pid is gone)
    proc = run_cli("locks", env=hf_env)
    assert proc.returncode == 0
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()[1:-1]}
    assert lines[f"{REPO}@main"].split()[1:4] == ["flock", "held", f"{os.uname().nodename}:{held.proc.pid}"]
    assert "STALE" in lines["tiny/root-bert@main"]
    assert "1 stale" in proc.stdout.splitlines()[-1]

    rows = {r["repo_id"]: r for r in as_json(run_cli("locks", "--json", env=hf_env))["locks"]}
    assert rows[REPO]["state"] == "held"
    assert rows[REPO]["pid"] == held.proc.pid
    assert rows[REPO]["since"] > 0
    assert rows["tiny/root-bert"]["stale"] is True
    assert rows["tiny/root-bert"]["backend"] == "lease"
    only = as_json(run_cli("locks", "tiny/root-bert", "--json", env=hf_env))["locks"]
    assert [r["repo_id"] for r in only] == ["tiny/root-bert"]

    held.release()
    rows = {r["repo_id"]: r for r in as_json(run_cli("locks", "--json", env=hf_env))["locks"]}
    assert rows[REPO]["state"] == "free"
    # The next contender takes the stale lease over by itself.
    warm = run_cli("warm", "tiny/root-bert", "--json", env=hf_env, HUB_PREFETCH_LOCK="lease")
    assert warm.returncode == 0, warm.stderr
    rows = {r["repo_id"]: r for r in as_json(run_cli("locks", "--json", env=hf_env))["locks"]}
    assert "tiny/root-bert" not in rows or rows["tiny/root-bert"]["stale"] is False


def test_locks_failure_on_unreadable_cache(hf_env: dict[str, Any], tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    proc = run_cli("locks", "--cache-dir", str(not_a_dir), "--json", env=hf_env)
    assert proc.returncode == cli.EXIT_CACHE_ERROR, proc.stdout + proc.stderr
    assert as_json(proc)["error"]["type"] == "CacheWriteError"


# ------------------------------------------------------------------------------------------ demo


@pytest.mark.slow
def test_demo_json_killed_downloader(hf_env: dict[str, Any]) -> None:
    proc = run_cli(
        "demo",
        "--workers",
        "2",
        "--rounds",
        "1",
        "--fault",
        "killed-downloader",
        "--json",
        env=hf_env,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = as_json(proc)
    assert (data["ok"], data["fault"], data["workers"]) == (True, "killed-downloader", 2)
    runs = {r["name"]: r for r in data["runs"]}
    assert list(runs) == ["plain (cold)", "hub-prefetch (cold)", "plain (warm)", "hub-prefetch (warm)"]
    cold = runs["hub-prefetch (cold)"]
    # The downloader died mid-shard; the survivor loaded the right weights, and no temp file is left.
    assert (cold["killed"], cold["ok"], cold["failed"], cold["wrong_weights"]) == (1, 1, 0, 0)
    assert cold["temp_files"] == 0
    assert cold["bytes_served"] >= data["bytes_needed"]
    assert runs["plain (cold)"]["killed"] == 1
    # Every cold run went through the throttled link: no run can be faster than its bytes allow.
    rate = data["bandwidth_mb_s"] * 1e6
    for name in ("plain (cold)", "hub-prefetch (cold)"):
        assert runs[name]["last_done_s"] >= 0.9 * runs[name]["bytes_served"] / rate, runs[name]
    warm = runs["hub-prefetch (warm)"]
    assert (warm["ok"], warm["hub_requests"], warm["bytes_served"]) == (2, 0, 0)
    assert warm["all_loaded_s"] is not None


@pytest.mark.slow
def test_demo_overview_runs_every_scenario_and_draws_the_chart(
    hf_env: dict[str, Any], tmp_path: Path
) -> None:
    chart = tmp_path / "out" / "demo.png"
    proc = run_cli("demo", "--workers", "2", "--json", "--chart", str(chart), env=hf_env, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = as_json(proc)
    scenarios = {s["name"]: s for s in data["scenarios"]}
    assert list(scenarios) == ["none", "warm", "http-503", "killed-downloader", "noop-flock", "several-nodes"]
    for name, s in scenarios.items():
        protected = s["hub_prefetch"]
        assert (protected["failed"], protected["wrong_weights"]) == (0, 0), (name, protected)
        assert protected["temp_files"] == 0, (name, protected)
        if s["cold"]:
            assert protected["bytes_served"] >= data["bytes_needed"], name
    # Warm: hub-prefetch makes no request at all; plain still asks the Hub.
    assert scenarios["warm"]["hub_prefetch"]["hub_requests"] == 0
    assert scenarios["warm"]["plain"]["hub_requests"] > 0
    # A flock that locks nothing: hub-prefetch detects it, takes the lease and downloads once.
    noop = scenarios["noop-flock"]
    assert noop["hub_prefetch"]["lock_backend"] == "lease"
    assert noop["hub_prefetch"]["bytes_served"] < 1.5 * data["bytes_needed"]
    # Plain loading is hurt either way: huggingface_hub 2.x downloads the blobs several times over (unique
    # temp names); 1.x's writers append to one shared `<etag>.incomplete` and the loads fail.
    plain = noop["plain"]
    assert plain["bytes_served"] >= 1.5 * data["bytes_needed"] or plain["failed"] > 0, plain
    assert scenarios["killed-downloader"]["hub_prefetch"]["killed"] == 1
    # Several nodes, each its own cache: plain downloads once per node, prefetch_distributed once per job.
    nodes = scenarios["several-nodes"]
    assert nodes["plain"]["workers"] == nodes["hub_prefetch"]["workers"] >= 3
    assert nodes["plain"]["bytes_served"] >= nodes["plain"]["workers"] * data["bytes_needed"]
    assert nodes["hub_prefetch"]["bytes_served"] < 1.5 * data["bytes_needed"]
    assert data["chart"] == str(chart.resolve())
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_demo_chart_is_skipped_without_matplotlib(tmp_path: Path) -> None:
    """Without the ``bench`` extra the overview says how to get the chart instead of failing."""
    code = (
        "import sys\n"
        "sys.modules['matplotlib'] = None\n"
        "from pathlib import Path\n"
        "from hub_prefetch.demo.chart import write_chart\n"
        f"assert write_chart([], Path({str(tmp_path / 'c.png')!r}), title='t') is None\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "c.png").exists()


@pytest.mark.slow
def test_demo_table_noop_flock(hf_env: dict[str, Any]) -> None:
    proc = run_cli(
        "demo", "--workers", "2", "--rounds", "1", "--fault", "noop-flock", env=hf_env, timeout=280
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("plain (cold)"))
    assert header.split("  ")[-1].strip() == "hub-prefetch (warm)"
    for row in (
        "failed workers",
        "time until all loaded",
        "bytes served / needed",
        "Hub requests",
        "temp files",
    ):
        assert any(line.startswith(row) for line in lines), row
    # With flock a silent no-op, auto-detection picks the lease: one download, not one per worker.
    assert "hub-prefetch: repo lock backend lease" in lines
    served = re.split(r"\s{2,}", next(line for line in lines if line.startswith("bytes served / needed")))
    assert len(served) == 5
    assert served[2].endswith("(1.0x)"), served  # hub-prefetch (cold)
    assert served[4].startswith("0 B /"), served  # hub-prefetch (warm)


def test_verify_reports_a_truncated_local_index(warm_snapshot: Path, hf_env: dict[str, Any]) -> None:
    index = _blob(warm_snapshot, f"{SUB}/model.safetensors.index.json")
    index.chmod(0o644)
    with index.open("r+b") as fh:
        fh.truncate(10)
    proc = run_cli("verify", REPO, "-s", SUB, "--json", env=hf_env)
    assert proc.returncode == cli.EXIT_VERIFY_FAILED, proc.stdout
    kinds = {p["path"]: p["kind"] for p in as_json(proc)["problems"]}
    assert kinds == {f"{SUB}/model.safetensors.index.json": "size"}


def test_repair_fixes_a_truncated_local_index(warm_snapshot: Path, hf_env: dict[str, Any]) -> None:
    index = _blob(warm_snapshot, f"{SUB}/model.safetensors.index.json")
    index.chmod(0o644)
    with index.open("r+b") as fh:
        fh.truncate(10)
    data = as_json(run_cli("repair", REPO, "-s", SUB, "--json", env=hf_env))
    assert data["exit_code"] == 0
    assert list(data["fixed"]) == [f"{SUB}/model.safetensors.index.json"]
    assert run_cli("verify", REPO, "-s", SUB, "--deep", env=hf_env).returncode == 0


def test_lock_wait_is_logged_not_drawn_when_not_a_terminal(
    hf_env: dict[str, Any], built_repos: dict[str, Any], holder: Any
) -> None:
    h = holder("flock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub_prefetch.cli", "warm", REPO, "-s", SUB],
        env=_env(hf_env, HUB_PREFETCH_WAIT_LOG_INTERVAL="0.2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()  # a job log gets whole lines at the lock's cadence
        h.release()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert line.startswith(f"hub-prefetch: INFO: waiting for {REPO}@main: held by "), line
    assert f":{h.proc.pid} " in line
    assert b"\r" not in err and "\r" not in line
    assert b"warmed" in out
