"""The README is executable: every code block runs, and every name, variable, exit code and version it and
the documentation pages (``docs/``) document is checked against the code, so prose that drifts from the code
fails here. (The pages' own code blocks run in ``test_docs.py``, their user-test example included.)

- ``python`` blocks run in a fresh interpreter against the session's local Hub (``tiny/...`` repos are the
  fixtures' repos).
- ``bash`` blocks: ``hub-prefetch ...`` lines run, in order, through the installed script against the local
  Hub and must exit 0 (``demo`` lines get ``--workers 2 --rounds 1`` appended, to stay quick); ``make X``
  lines must name a Makefile target.
- ``text`` blocks are sample output and are not run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import hub_prefetch
from hub_prefetch import cli
from hub_prefetch.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
#: The README and every docs page: where the CLI, settings, testing and version sections now live.
TEXTS = [README, *(p.read_text() for p in sorted((ROOT / "docs").rglob("*.md")))]
DOCUMENTED = "\n".join(TEXTS)
SCRIPT = Path(sys.executable).with_name("hub-prefetch")
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
KNOWN_LANGS = {"python", "bash", "text"}


def blocks(lang: str) -> list[str]:
    return [body for found, body in BLOCK.findall(README) if found == lang]


def section(title: str) -> str:
    """A section of the README (``##``) or a docs page (``#``: the whole page), up to the next ``##``."""
    for text in TEXTS:
        match = re.search(rf"^##? {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
        if match:
            return match.group(1)
    raise AssertionError(f"neither the README nor docs/ has a section '{title}'")


def env_of(hf_env: dict[str, Any], **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in {**hf_env, **extra}.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def is_file_block(body: str) -> bool:
    return bool(re.match(r"# (conftest|test_\w+)\.py\n", body))


# ------------------------------------------------------------------------------------------ the blocks run


def test_every_block_has_a_known_language_and_there_is_something_to_run() -> None:
    langs = [found for found, _ in BLOCK.findall(README)]
    assert set(langs) <= KNOWN_LANGS, f"untagged or unknown code blocks: {langs}"
    assert [b for b in blocks("python") if not is_file_block(b)], "no python example to run"
    assert "## Two commands" in README
    assert any("hub-prefetch " in b for b in blocks("bash")), "no CLI example to run"


def test_python_blocks_run_against_the_local_hub(
    hf_env: dict[str, Any], built_repos: dict[str, Any], local_hub: Any
) -> None:
    for body in [b for b in blocks("python") if not is_file_block(b)]:
        proc = subprocess.run(
            [sys.executable, "-c", body],
            env=env_of(hf_env),
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert proc.returncode == 0, f"README block failed:\n{body}\n--- stderr\n{proc.stderr[-4000:]}"


def test_bash_blocks_run(hf_env: dict[str, Any], built_repos: dict[str, Any]) -> None:
    makefile = (ROOT / "Makefile").read_text()
    ran = 0
    for body in blocks("bash"):
        for raw in body.splitlines():
            line = raw.split("  #")[0].strip()
            if not line:
                continue
            words = line.split()
            if words[0] == "make":
                assert re.search(rf"^{re.escape(words[1])}:", makefile, re.MULTILINE), line
                continue
            if words[0].startswith(".venv/") and words[0].endswith("/hub-prefetch"):
                words[0] = "hub-prefetch"  # the same command from another stack's venv
            assert words[0] == "hub-prefetch", f"README bash line this test cannot run: {line}"
            args = words[1:]
            if args[0] == "demo":
                args += ["--workers", "2", "--rounds", "1"]
            proc = subprocess.run(
                [str(SCRIPT), *args],
                env=env_of(hf_env),
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert proc.returncode == 0, f"{line}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            if "--json" in args:
                assert json.loads(proc.stdout)["ok"] is True
            ran += 1
    assert ran >= 2


# ------------------------------------------------------------------------------------------ names and tables


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    obj: object = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        if not hasattr(obj, part):
            obj = importlib.import_module(".".join(parts[: i + 1]))
        else:
            obj = getattr(obj, part)
    return obj


def test_every_documented_python_name_exists() -> None:
    names = set(re.findall(r"\bhub_prefetch(?:\.[A-Za-z_]\w*)+", DOCUMENTED))
    assert len(names) >= 10, names
    for name in sorted(names):
        _resolve(name.rstrip("."))
    testing = section("Testing your own loader with `hub_prefetch.testing`")
    import hub_prefetch.testing as testing_pkg
    from hub_prefetch.testing import pytest_plugin

    for name in ("LocalHub", "build_sharded_model", "build_diffusers_pipeline", "run_workers", "WorkerPool"):
        assert f"`{name}" in testing
        assert name in testing_pkg.__all__
    fixtures = re.findall(r"`(\w+)`", testing.split("Fixtures:")[1])
    assert len(fixtures) >= 5, fixtures
    for fixture in fixtures:
        assert callable(getattr(pytest_plugin, fixture)), fixture
    for module, function in re.findall(r"\"([\w.]+):(\w+)\"", DOCUMENTED):
        assert callable(getattr(importlib.import_module(module), function)), f"{module}:{function}"
    assert set(hub_prefetch.__all__) >= {
        "from_pretrained_with_prefetch",
        "prefetch_subfolders",
        "retry_on_missing_shard",
        "RepoLock",
        "verify",
    }


def test_cli_section_names_every_command_and_only_real_flags() -> None:
    text = section("The command line")
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = set(sub.choices)
    assert commands == {"warm", "verify", "repair", "locks", "doctor", "demo"}
    for command in commands:
        assert f"`{command} " in text, f"README does not document `{command}`"
    known = {opt for p in sub.choices.values() for a in p._actions for opt in a.option_strings}
    for flag in set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", text)):
        assert flag in known, f"README documents {flag}, which no command accepts"
    faults = re.findall(r"`([a-z0-9-]+)`", text.split("Faults:")[1].split(".")[0])
    demo = sub.choices["demo"]
    fault_action = next(a for a in demo._actions if "--fault" in a.option_strings)
    assert set(faults) == set(fault_action.choices or ())


def test_exit_code_table_matches_the_cli() -> None:
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", section("The command line"), re.MULTILINE)
    documented = {int(code) for code, _ in rows}
    actual = {v for name, v in vars(cli).items() if name.startswith("EXIT_") and isinstance(v, int)}
    assert documented == actual
    for code, _ in rows:
        assert re.search(rf"^\s+{code}\s+\S", cli.EXIT_CODES_HELP, re.MULTILINE), (
            f"--help lacks exit code {code}"
        )


def test_settings_table_matches_the_code() -> None:
    table = section("Settings")
    rows = re.findall(r"^\| `([A-Z_]+)`(?: / `([A-Z_]+)`)? \| `?([^|`]*)`? \|", table, re.MULTILINE)
    documented = {name for row in rows for name in row[:2] if name}
    settings_doc = sys.modules[Settings.__module__].__doc__ or ""
    in_code_table = set(re.findall(r"``([A-Z][A-Z_]+)``", settings_doc))
    assert in_code_table <= documented, f"missing from the README: {in_code_table - documented}"
    sources = "\n".join(p.read_text() for p in (ROOT / "src" / "hub_prefetch").rglob("*.py"))
    for name in documented:
        assert name in sources, f"README documents {name}, which the library never reads"
    defaults = Settings.from_env(cache_dir="/nonexistent")
    fields = {
        "HUB_PREFETCH_LEASE_TTL": "lease_ttl",
        "HUB_PREFETCH_WAIT_LOG_INTERVAL": "wait_log_interval",
        "HUB_PREFETCH_REVISION_TTL": "revision_ttl",
        "HUB_PREFETCH_MAX_ATTEMPTS": "max_attempts",
        "HUB_PREFETCH_BACKOFF": "backoff",
        "HUB_PREFETCH_BACKOFF_MAX": "backoff_max",
        "HUB_PREFETCH_DOWNLOAD_WORKERS": "download_workers",
    }
    by_name = {row[0]: row[2].strip() for row in rows}
    env_set = [k for k in os.environ if k.startswith("HUB_PREFETCH_")]
    if not env_set:
        for var, attr in fields.items():
            assert float(by_name[var]) == float(getattr(defaults, attr)), var
        assert by_name["HUB_PREFETCH_LOCK"] == defaults.lock_backend


def _installed(dist: str) -> str:
    return metadata.version(dist).split("+")[0]


def test_version_matrix_names_this_stack() -> None:
    rows = dict(
        (name, (old, new))
        for name, old, new in re.findall(
            r"^\| ([\w ()]+?) \| ([\d.]+) \| ([\d.]+) \|$", DOCUMENTED, re.MULTILINE
        )
    )
    dists = {"huggingface_hub": "huggingface_hub", "transformers": "transformers", "diffusers": "diffusers"}
    dists["torch (CPU)"] = "torch"
    columns = {0: True, 1: True}
    for row, dist in dists.items():
        assert row in rows, f"README version matrix lacks {row}"
        for column in (0, 1):
            if rows[row][column] != _installed(dist):
                columns[column] = False
    assert any(columns.values()), (
        f"this stack ({[_installed(d) for d in dists.values()]}) is not in the README"
    )
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in rows["python"]
    pins = {
        "new": (ROOT / "stacks" / "new.txt").read_text(),
        "old": (ROOT / "stacks" / "old.txt").read_text(),
    }
    assert f"huggingface_hub=={rows['huggingface_hub'][0]}" in pins["old"]
    assert f"transformers=={rows['transformers'][0]}" in pins["old"]
    assert f"torch=={rows['torch (CPU)'][1]}" in pins["new"]


@pytest.mark.parametrize("path", ["CHANGELOG.md", "Makefile", "docs/failure-modes.md"])
def test_referenced_files_exist(path: str) -> None:
    assert (ROOT / path).is_file()
