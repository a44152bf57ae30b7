"""The CLI, the demo and the console display import in one direction: cli -> demo -> console.

The demo must never import the CLI (not even lazily): they used to import each other. Importing the CLI
must not load the optional extras (aiohttp, torch, transformers): it imports the demo at the top, and the
demo loads them only when it runs.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path
from typing import cast

from hub_prefetch.cli import build_parser
from hub_prefetch.demo.faults import FAULTS

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "hub_prefetch"


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (in functions and under TYPE_CHECKING too)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_the_demo_and_the_console_never_import_the_cli() -> None:
    sources = [*sorted((PACKAGE / "demo").glob("*.py")), PACKAGE / "console.py"]
    assert len(sources) >= 4
    for path in sources:
        found = imported_modules(path)
        bad = {m for m in found if m == "hub_prefetch.cli" or m.startswith("hub_prefetch.cli.")}
        assert not bad, f"{path.name} imports {bad}"
    console = imported_modules(PACKAGE / "console.py")
    assert not {m for m in console if m.startswith("hub_prefetch.demo")}


def test_imports_in_a_fresh_interpreter() -> None:
    code = (
        "import sys\n"
        "import hub_prefetch.demo, hub_prefetch.demo.faults, hub_prefetch.console\n"
        "assert 'hub_prefetch.cli' not in sys.modules, 'the demo imported the CLI'\n"
        "import hub_prefetch.cli\n"
        "heavy = {'aiohttp', 'torch', 'transformers', 'diffusers'} & {m.split('.')[0] for m in sys.modules}\n"
        "assert not heavy, f'importing the CLI loaded {heavy}'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_fault_choices_come_from_the_demo() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    demo = cast("dict[str, argparse.ArgumentParser]", commands)["demo"]
    fault = next(a for a in demo._actions if "--fault" in a.option_strings)
    assert tuple(fault.choices or ()) == tuple(FAULTS)
    help_text = demo.format_help()
    for name, spec in FAULTS.items():
        assert f"  {name}" in help_text and spec.summary in help_text
