"""mkdocs hooks of the hub-prefetch site (``hooks:`` in mkdocs.yml).

- Pages that live elsewhere in the repo are added to the site as they are, never copied by hand:
  ``CHANGELOG.md`` becomes ``changelog.md``, and ``benchmarks/results/`` (the tables ``make bench`` and
  ``make bench-full`` write, and their plots) keeps its layout, each ``README.md`` as that folder's
  ``index.md``, any other ``.md`` a page of its own (a new results page or folder must be added to the
  nav: strict mode fails on a page outside it).
- Every public member of the modules the API reference renders must have a docstring: one without is a
  warning, and ``mkdocs build --strict`` (``make docs``) fails on warnings. mkdocstrings would otherwise
  leave it out silently (``show_if_no_docstring: false``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.plugins.hub_prefetch_docs")

ROOT = Path(__file__).resolve().parents[1]
#: The modules whose public surface (``__all__``) the API reference renders.
API_MODULES = (
    "hub_prefetch",
    "hub_prefetch.errors",
    "hub_prefetch.settings",
    "hub_prefetch.distributed",
    "hub_prefetch.testing",
)
#: Public functions whose name a submodule shadows in a static reading (``hub_prefetch.verify`` is both):
#: the reference renders them from where they are defined, and they are checked there.
SHADOWED = ("prefetch.api.prefetch", "prefetch.api.verify", "prefetch.api.repair")


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "changelog.md", content=(ROOT / "CHANGELOG.md").read_text()))
    results = ROOT / "benchmarks" / "results"
    for path in sorted(results.rglob("*")):
        rel = path.relative_to(results)
        if "tmp" in rel.parts or not path.is_file():
            continue
        if path.name == "README.md":  # benchmarks/results/X/README.md -> benchmarks/results/X/index.md
            uri = (Path("benchmarks/results") / rel.parent / "index.md").as_posix()
            files.append(File.generated(config, uri, content=path.read_text()))
        elif path.suffix == ".md":  # another table of results (the fan-out's): a page of its own
            uri = (Path("benchmarks/results") / rel).as_posix()
            files.append(File.generated(config, uri, content=path.read_text()))
        elif path.suffix == ".png":
            uri = (Path("benchmarks/results") / rel).as_posix()
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def undocumented(modules: tuple[str, ...] = API_MODULES, search: Path = ROOT / "src") -> list[str]:
    """Public members (in ``__all__``, and the public methods of public classes) without a docstring."""
    import griffe  # noqa: PLC0415 - a docs-only dependency

    loader = griffe.GriffeLoader(search_paths=[str(search)])
    package = loader.load("hub_prefetch")
    loader.resolve_aliases(implicit=False, external=False)
    missing: list[str] = []
    for name in modules:
        module = package if name == "hub_prefetch" else package[name.removeprefix("hub_prefetch.")]
        if not module.docstring:
            missing.append(name)
        exported = module.exports if module.exports is not None else list(module.members)
        for member_name in exported:
            if not isinstance(member_name, str) or member_name.startswith("_"):
                continue
            try:
                member = module[member_name]
                target = member.final_target if member.is_alias else member
            except Exception:  # noqa: BLE001 - an unresolvable alias is reported, not raised
                missing.append(f"{name}.{member_name} (cannot resolve)")
                continue
            if target.is_module or target.is_attribute:
                continue  # submodules have their own page; constants are documented where they are set
            if not target.docstring:
                missing.append(f"{name}.{member_name}")
            if target.is_class:
                for method_name, method in target.members.items():
                    if method_name.startswith("_") or method.is_alias or not method.is_function:
                        continue
                    if not method.docstring:
                        missing.append(f"{name}.{member_name}.{method_name}")
    for path in SHADOWED:
        if not package[path].docstring:
            missing.append(f"hub_prefetch.{path}")
    return sorted(set(missing))


def on_pre_build(config: Any) -> None:
    for name in undocumented():
        log.warning("no docstring: %s (the API reference would leave it out)", name)
