"""The documentation site (``docs/``, built by ``make docs``) is executable, as the README is.

Every fenced block of every page is one of:

- run: ``python`` blocks run in a fresh interpreter, ``bash`` blocks as one ``bash -euo pipefail`` script,
  in order, in one folder per page, against the session's local Hub (``tiny/...`` are the fixtures'
  repos). A ``bash`` block that sets ``HF_HUB_OFFLINE=1`` must make no request to the Hub. ``make X``
  lines must name a Makefile target; ``hub-prefetch demo`` lines run small (2 workers, 1 round).
- a file: ``<!-- file: NAME -->`` on the line before the block writes it into the page's folder, for the
  blocks after it to use; a ``python`` block starting ``# conftest.py`` / ``# test_*.py`` is a file too,
  and the page's files run under pytest, as a user would.
- untested: ``<!-- untested: REASON -->`` on the line before it; the reason is required.
- ``text``: sample output, not run.

Then the site itself: ``mkdocs build --strict`` passes, and fails on a broken link or an undocumented
public member.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md"))
BIN = Path(sys.executable).parent
BLOCK = re.compile(
    r"(?:^<!-- (?P<mark>untested|file): (?P<arg>[^\n]*?) -->\n)?^```(?P<lang>\w*)\n(?P<body>.*?)^```",
    re.MULTILINE | re.DOTALL,
)
RUNNABLE = {"python", "bash"}
KNOWN_LANGS = {"python", "bash", "text", "yaml"}
DEMO_SMALL = ["--workers", "2", "--rounds", "1", "--bandwidth", "0", "--no-chart"]


def blocks(page: Path) -> list[dict[str, str]]:
    return [m.groupdict() for m in BLOCK.finditer(page.read_text())]


def page_id(page: Path) -> str:
    return str(page.relative_to(DOCS))


def is_test_file(body: str) -> bool:
    return bool(re.match(r"# (conftest|test_\w+)\.py\n", body))


def env_of(hf_env: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in hf_env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # hub-prefetch, torchrun, python of this stack
    return env


def slurm_ready() -> str | None:
    """None when Slurm can run a job here, else why not."""
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return "Slurm is not installed (sbatch, sinfo)"
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-t", "idle,mixed", "-o", "%n"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed: {exc}"
    if proc.returncode != 0 or not proc.stdout.strip():
        return f"no idle Slurm node (sinfo: {proc.stdout.strip() or proc.stderr.strip()})"
    return None


# ------------------------------------------------------------------------------------------ every block


def test_every_block_is_run_a_file_untested_with_a_reason_or_output() -> None:
    assert PAGES, "no docs pages"
    runnable = 0
    for page in PAGES:
        for block in blocks(page):
            where = f"{page_id(page)}: ```{block['lang']}\n{block['body'][:200]}"
            assert block["lang"] in KNOWN_LANGS, f"untagged or unknown code block in {where}"
            if block["mark"] == "untested":
                assert len(block["arg"].strip()) >= 10, f"an untested block needs its reason: {where}"
                continue
            if block["mark"] == "file":
                assert re.fullmatch(r"[\w.-]+", block["arg"]), where
                continue
            if block["lang"] == "yaml":
                pytest.fail(f"a yaml block can only be a file or untested: {where}")
            runnable += block["lang"] in RUNNABLE
    assert runnable >= 15, runnable


RUN_PAGES = [
    p
    for p in PAGES
    if any(b["lang"] in RUNNABLE and b["mark"] != "untested" for b in blocks(p) if b["mark"] != "file")
]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_PAGES, ids=page_id)
def test_page_blocks_run(
    page: Path, tmp_path: Path, hf_env: dict[str, Any], built_repos: dict[str, Any], local_hub: Any
) -> None:
    page_blocks = blocks(page)
    if any("sbatch" in b["body"] for b in page_blocks if b["mark"] != "untested"):
        why = slurm_ready()
        if why:
            pytest.skip(f"{page_id(page)} needs Slurm: {why}")
    env = env_of(hf_env)
    makefile = (ROOT / "Makefile").read_text()
    test_files: list[str] = []
    ran = 0
    for block in page_blocks:
        lang, body, mark = block["lang"], block["body"], block["mark"]
        if mark == "untested" or lang not in RUNNABLE | {"yaml"}:
            continue
        if mark == "file":
            target = tmp_path / block["arg"]
            target.write_text(body)
            if body.startswith("#!"):
                target.chmod(0o755)
            continue
        if lang == "python" and is_test_file(body):
            name = body.splitlines()[0].removeprefix("# ").strip()
            (tmp_path / name).write_text(body)
            test_files.append(name)
            continue
        if lang == "python":
            cmd = [sys.executable, "-c", body]
        else:
            lines = [line.split("  #")[0].strip() for line in body.splitlines()]
            lines = [line for line in lines if line]
            makes = [line for line in lines if line.startswith("make ")]
            for line in makes:
                target_name = line.split()[1]
                assert re.search(rf"^{re.escape(target_name)}:", makefile, re.MULTILINE), line
            if len(makes) == len(lines):
                continue
            assert not makes, f"mix of make and other lines: {body}"
            script = re.sub(
                r"\bhub-prefetch demo\b([^\n]*)", rf"hub-prefetch demo\1 {' '.join(DEMO_SMALL)}", body
            )
            cmd = ["bash", "-euo", "pipefail", "-c", script]
        before = len(local_hub.requests())
        proc = subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280, check=False
        )
        assert proc.returncode == 0, (
            f"{page_id(page)} block failed:\n{body}\n--- stdout\n{proc.stdout[-3000:]}"
            f"\n--- stderr\n{proc.stderr[-4000:]}"
        )
        if "HF_HUB_OFFLINE=1" in body:
            made = local_hub.requests()[before:]
            assert not made, f"an offline block asked the Hub: {[r.path for r in made]}\n{body}"
        ran += 1
    if test_files:
        run_user_tests(tmp_path)
        ran += 1
    assert ran, f"{page_id(page)}: nothing ran"
    check_page(page, built_repos, local_hub)


def run_user_tests(folder: Path) -> None:
    """The page's ``conftest.py`` / ``test_*.py`` run under pytest in a fresh process, as a user's."""
    env = dict(os.environ)
    for key in ("HF_ENDPOINT", "HF_HUB_CACHE", "PYTEST_ADDOPTS"):
        env.pop(key, None)
    env["HF_HOME"] = str(folder / "hf-home")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(folder),
            str(folder),
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", proc.stdout), proc.stdout[-2000:]


def check_page(page: Path, built_repos: dict[str, Any], local_hub: Any) -> None:
    """What a page promises beyond "it runs"."""
    if page_id(page) == "recipes/torchrun.md":
        sharded = built_repos["sharded"]
        for path in sharded.files:
            if path.startswith(f"{sharded.subfolder}/"):
                assert local_hub.times_served(path) == 1, (path, local_hub.times_served(path))


# ------------------------------------------------------------------------------------------ what pages say


def test_the_error_tree_is_the_one_in_the_code() -> None:
    import hub_prefetch.errors as errors_module

    page = (DOCS / "errors.md").read_text()
    tree = next(b["body"] for b in blocks(DOCS / "errors.md") if b["lang"] == "text")

    def lines(text: str) -> str:
        return "\n".join(line.strip() for line in text.strip().splitlines())

    assert lines(tree) in lines(errors_module.__doc__ or ""), "errors.md and errors.py draw different trees"
    for name in re.findall(r"(?:── |^)(\w+)(?:\(|\s)", tree, re.MULTILINE):
        assert name in errors_module.__all__, name
    assert "`hub_prefetch.errors.to_json`" in page


def test_the_nav_lists_every_page() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in PAGES:
        assert page_id(page) in nav, f"{page_id(page)} is not in mkdocs.yml's nav"


def test_the_multi_node_places_are_filled() -> None:
    """The several-nodes demo row and recipe are written: no placeholder left, the row in the code."""
    marked = [
        p.name
        for p in [*PAGES, ROOT / "README.md", *(ROOT / "src/hub_prefetch/demo").glob("*.py")]
        if "MULTI-NODE ROW" in p.read_text() or "*Pending*" in p.read_text()
    ]
    assert not marked, marked
    assert "## Several nodes" in (DOCS / "demo.md").read_text()
    recipe = (DOCS / "recipes/torchrun.md").read_text()
    assert "## Several nodes" in recipe
    assert "HUB_PREFETCH_FANOUT=0" in recipe
    from hub_prefetch.demo.overview import SCENARIOS

    assert any(s.name == "several-nodes" and s.nodes > 1 for s in SCENARIOS)
    for page in (DOCS / "demo.md", ROOT / "README.md"):
        assert re.search(r"^several-nodes +plain ", page.read_text(), re.MULTILINE), page.name


# ------------------------------------------------------------------------------------------ the site builds


def mkdocs(site: Path, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = BIN / "mkdocs"
    if not exe.exists():
        pytest.skip("mkdocs is not installed in this environment (pip install -e '.[docs]')")
    env = dict(os.environ)  # griffe reads the sources statically, from the config's own src/
    env["NO_MKDOCS_2_WARNING"] = "1"
    cmd = [str(exe), "build", "--strict", "--site-dir", str(site)]
    if config is not None:
        cmd += ["--config-file", str(config)]
    return subprocess.run(
        cmd,
        cwd=config.parent if config else ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.fixture
def docs_copy(tmp_path: Path) -> Path:
    """A copy of everything the build reads, to break on purpose."""
    copy = tmp_path / "repo"
    for name in ("docs", "src", "benchmarks"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__", "tmp"))
    for name in ("mkdocs.yml", "CHANGELOG.md"):
        shutil.copy(ROOT / name, copy / name)
    return copy


@pytest.mark.slow
def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    proc = mkdocs(tmp_path / "site")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-4000:]
    api = (tmp_path / "site" / "reference" / "index.html").read_text()
    for name in ("prefetch_distributed", "from_pretrained_with_prefetch", "RepoLock", "Settings"):
        assert f'id="hub_prefetch.{name}"' in api, name
    for name in ("prefetch", "verify", "repair"):  # shadowed by their modules: rendered from prefetch.api
        assert f'id="hub_prefetch.prefetch.api.{name}"' in api, name
    assert (tmp_path / "site" / "benchmarks" / "results" / "time_to_all_ready.png").is_file()
    assert (tmp_path / "site" / "benchmarks" / "results" / "engine-full" / "engine.png").is_file()


@pytest.mark.slow
def test_a_broken_link_fails_the_build(docs_copy: Path) -> None:
    page = docs_copy / "docs" / "index.md"
    page.write_text(page.read_text() + "\nSee [nowhere](no-such-page.md).\n")
    proc = mkdocs(docs_copy / "site", docs_copy / "mkdocs.yml")
    assert proc.returncode != 0
    assert "no-such-page.md" in proc.stderr


@pytest.mark.slow
def test_an_undocumented_public_function_fails_the_build(docs_copy: Path) -> None:
    settings = docs_copy / "src" / "hub_prefetch" / "settings.py"
    text = settings.read_text()
    documented = '        """A copy with ``changes`` applied (the object itself is frozen)."""\n'
    assert documented in text
    settings.write_text(text.replace(documented, ""))
    proc = mkdocs(docs_copy / "site", docs_copy / "mkdocs.yml")
    assert proc.returncode != 0
    assert "no docstring: hub_prefetch.Settings.replace" in proc.stderr
