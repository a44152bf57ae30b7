"""Which files a load of some subfolders needs, from the Hub's listing of one commit.

The reference fetched ``{sub}/*`` + ``*.json`` + ``*.txt``, and huggingface_hub's ``*`` crosses
``/``: every weight format, every variant and every json at any depth. We take what
``from_pretrained`` reads:

* per subfolder, every non-weight file directly in it (configs, tokenizer and processor files,
  custom code, chat templates);
* weights in one format (safetensors over ``.bin``), of the requested variant when the folder has
  it (else the plain files, as diffusers falls back), and of a sharded checkpoint only the index
  and the shards its ``weight_map`` names;
* root-level ``*.json`` (``model_index.json``, root configs) when loading a subfolder.
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import CorruptRepoFileError, UnknownSubfolderError

__all__ = ["WEIGHT_SUFFIXES", "Selection", "reference_selection", "select_files"]

WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".onnx",
    ".onnx_data",
    ".gguf",
    ".ot",
    ".tflite",
    ".pb",
    ".npz",
)
_FORMATS = (".safetensors", ".bin")
_SKIPPED_NAMES = {".gitattributes", ".gitignore"}
_SKIPPED_SUFFIXES = (".md", ".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg", ".pdf")

IndexLoader = Callable[[str], bytes]


@dataclass(frozen=True)
class Selection:
    """The files a load needs, split so metadata (and indexes) can be fetched before weights."""

    metadata: tuple[str, ...]
    weights: tuple[str, ...]

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(sorted({*self.metadata, *self.weights}))


def _is_weight(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES)


def _is_index(name: str) -> bool:
    return ".index" in name and name.endswith(".json") and any(f"{fmt}.index" in name for fmt in _FORMATS)


def _skipped(name: str) -> bool:
    lower = name.lower()
    return name in _SKIPPED_NAMES or lower.endswith(_SKIPPED_SUFFIXES) or lower.startswith("license")


def _variant_of(name: str) -> str | None:
    """``model.fp16.safetensors`` -> fp16; ``model.fp16-00001-of-00002.safetensors`` -> fp16;
    ``model.safetensors.index.fp16.json`` -> fp16; plain names -> None."""
    if _is_index(name):
        parts = name.split(".")
        # model.safetensors.index.json has 4 parts; a variant adds one before "json".
        return parts[-2] if len(parts) >= 5 else None
    stem = name.rsplit(".", 1)[0]
    parts = stem.split(".")
    if len(parts) < 2:
        return None
    return parts[-1].split("-", 1)[0] or None


def _format_of(name: str) -> str | None:
    for fmt in _FORMATS:
        if name.endswith(fmt) or (f"{fmt}.index" in name and name.endswith(".json")):
            return fmt
    return None


def _children(paths: Iterable[str], folder: str, *, recursive: bool) -> list[str]:
    prefix = f"{folder}/" if folder else ""
    out = []
    for path in paths:
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix) :]
        if recursive or "/" not in rest:
            out.append(path)
    return out


def _parse_index(path: str, raw: bytes, listing: Mapping[str, Any]) -> list[str]:
    try:
        weight_map = json.loads(raw)["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptRepoFileError(f"{path} in the repo is not a valid index: {exc}", path=path) from exc
    if not shards:
        # Loading it would read no weights and initialise every parameter at random, without an error.
        raise CorruptRepoFileError(f"{path} in the repo names no shard", path=path)
    folder = posixpath.dirname(path)
    out = []
    for shard in shards:
        if not isinstance(shard, str) or "/" in shard or shard in ("", ".", ".."):
            raise CorruptRepoFileError(f"{path} names an invalid shard {shard!r}", path=path)
        full = posixpath.join(folder, shard) if folder else shard
        if full not in listing:
            raise CorruptRepoFileError(f"{path} names {full}, which the repo does not have", path=path)
        out.append(full)
    return out


def _select_weights(
    candidates: list[str], variant: str | None, listing: Mapping[str, Any], load_index: IndexLoader
) -> tuple[list[str], list[str]]:
    """(index files, weight files) for one folder."""
    by_variant = [c for c in candidates if _variant_of(posixpath.basename(c)) == variant] if variant else []
    if not by_variant:
        by_variant = [c for c in candidates if _variant_of(posixpath.basename(c)) is None]
    for fmt in _FORMATS:
        in_format = [c for c in by_variant if _format_of(posixpath.basename(c)) == fmt]
        if not in_format:
            continue
        indexes = [c for c in in_format if _is_index(posixpath.basename(c))]
        if indexes:
            shards: set[str] = set()
            for index in indexes:
                shards.update(_parse_index(index, load_index(index), listing))
            return indexes, sorted(shards)
        return [], sorted(in_format)
    return [], []


def select_files(
    listing: Mapping[str, Any],
    subfolders: Sequence[str],
    *,
    load_index: IndexLoader,
    variant: str | None = None,
    all_files: bool = False,
    include_root_metadata: bool = True,
    weights: bool = True,
) -> Selection:
    """Choose the files needed to load ``subfolders`` (``""`` is the repo root; none: root metadata only).

    ``listing`` maps every path of the commit to its metadata; ``load_index(path)`` returns the
    bytes of an ``*.index.json`` (the caller downloads it). ``weights=False`` takes configs and
    tokenizer files only (for loading a config, tokenizer, processor or scheduler). Raises
    :class:`UnknownSubfolderError` for a subfolder with no files and
    :class:`CorruptRepoFileError` for an index that is not valid or names absent shards.
    """
    paths = sorted(listing)
    metadata: set[str] = set()
    weight_files: set[str] = set()
    folders = list(dict.fromkeys(subfolders))
    missing = [f for f in folders if f and not _children(paths, f, recursive=True)]
    if missing:
        raise UnknownSubfolderError(
            f"no files under {', '.join(repr(m) for m in missing)} at this commit", subfolders=missing
        )
    if include_root_metadata:
        metadata.update(
            p for p in _children(paths, "", recursive=False) if p.endswith(".json") and not _is_index(p)
        )
    for folder in folders:
        if all_files:
            metadata.update(_children(paths, folder, recursive=True))
            continue
        children = _children(paths, folder, recursive=False)
        metadata.update(c for c in children if not _is_weight(c) and not _is_index(c) and not _skipped(c))
        if not weights:
            continue
        candidates = [c for c in children if _format_of(posixpath.basename(c)) is not None]
        indexes, chosen = _select_weights(candidates, variant, listing, load_index)
        metadata.update(indexes)
        weight_files.update(chosen)
    return Selection(metadata=tuple(sorted(metadata)), weights=tuple(sorted(weight_files - metadata)))


def reference_selection(paths: Iterable[str], subfolders: Sequence[str]) -> list[str]:
    """What the reference helper fetched (``{sub}/*``, ``*.json``, ``*.txt``; ``*`` crossing ``/``)."""
    patterns = [f"{s}/*" for s in subfolders] + ["*.json", "*.txt"]
    return sorted(p for p in paths if any(fnmatch.fnmatch(p, pat) for pat in patterns))
