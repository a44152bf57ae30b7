"""The benchmark repo: a BERT of ~13 MB (``--size``: small ~0.5 MB, medium, big ~21 MB), laid out the
way many real Hub repos are.

``text_encoder/`` holds what a load needs (``config.json``, ``model.safetensors.index.json``, the
safetensors shards) plus the legacy ``pytorch_model.bin`` copy that many real repos still carry beside
them; ``vision_model/`` is a second component nobody in the benchmark loads. The build is cached on disk
per transformers/torch version, like the test builders'.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ID = "bench/bert-encoder"
SUBFOLDER = "text_encoder"
BUILD_FORMAT = 1

#: ~3.3 M parameters: ~13 MB of float32 weights in 3 shards (quick and full mode).
MEDIUM_CONFIG: dict[str, Any] = {
    "vocab_size": 8000,
    "hidden_size": 192,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 768,
    "max_position_embeddings": 256,
}
#: ~5.3 M parameters: ~21 MB (``--size big``).
BIG_CONFIG: dict[str, Any] = {
    "vocab_size": 8000,
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "max_position_embeddings": 256,
}
CONFIGS: dict[str, dict[str, Any]] = {}
SMALL_CONFIG: dict[str, Any] = {
    "vocab_size": 1000,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 64,
}
_META = ".bench-build.json"
CONFIGS.update(big=BIG_CONFIG, medium=MEDIUM_CONFIG, small=SMALL_CONFIG)


@dataclass(frozen=True)
class BenchRepo:
    repo_id: str
    subfolder: str
    commit: str
    fingerprint: str
    needed: tuple[str, ...]  # the files a plain load of ``subfolder`` fetches
    bytes_needed: int
    bytes_repo: int
    shards: int
    legacy_bin: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "subfolder": self.subfolder,
            "commit": self.commit,
            "fingerprint": self.fingerprint,
            "needed": list(self.needed),
            "bytes_needed": self.bytes_needed,
            "bytes_repo": self.bytes_repo,
            "shards": self.shards,
            "legacy_bin": self.legacy_bin,
        }


def _versions() -> list[str]:
    out = []
    for dist in ("torch", "transformers", "safetensors"):
        try:
            out.append(f"{dist}-{metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(f"{dist}-absent")
    return out


def _build(folder: Path, *, size: str, shards: int, legacy_bin: bool) -> dict[str, Any]:
    import torch
    import transformers
    from transformers import BertConfig, BertModel

    from hub_prefetch.testing.repos import tensor_fingerprint

    transformers.logging.set_verbosity_error()
    torch.manual_seed(1234)
    model = BertModel(BertConfig(**CONFIGS[size]))
    model.eval()
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    enc = folder / SUBFOLDER
    # transformers packs whole tensors greedily: a limit a little above total/shards gives ~shards files.
    model.save_pretrained(enc, max_shard_size=max(total // shards + total // (4 * shards), 1024))
    if legacy_bin:
        torch.save(model.state_dict(), enc / "pytorch_model.bin")
    torch.manual_seed(99)
    other = BertModel(BertConfig(**SMALL_CONFIG))
    other.save_pretrained(folder / "vision_model")
    (folder / "README.md").write_text(f"# {REPO_ID}\n\nBenchmark repo built by benchmarks/model.py.\n")
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    return {"fingerprint": tensor_fingerprint(model)}


def build_repo(store: Any, *, size: str = "medium", shards: int = 4, legacy_bin: bool = True) -> BenchRepo:
    """Build (or reuse) the benchmark model and commit it to ``store`` (a RepoStore) as :data:`REPO_ID`."""
    key = hashlib.sha256(json.dumps([BUILD_FORMAT, size, shards, legacy_bin, _versions()]).encode())
    root = Path(os.environ.get("HUB_PREFETCH_BUILD_CACHE") or tempfile.gettempdir()) / "hub-prefetch-bench"
    final = root / key.hexdigest()[:16]
    if not (final / _META).is_file():
        root.mkdir(parents=True, exist_ok=True)
        work = root / f".{uuid.uuid4().hex}.tmp"
        work.mkdir()
        try:
            meta = _build(work, size=size, shards=shards, legacy_bin=legacy_bin)
            (work / _META).write_text(json.dumps(meta))
            try:
                work.rename(final)
            except OSError:
                if not (final / _META).is_file():
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    meta = json.loads((final / _META).read_text())
    files = {
        p.relative_to(final).as_posix(): p
        for p in sorted(final.rglob("*"))
        if p.is_file() and p.name != _META
    }
    commit = store.commit(REPO_ID, files, message="benchmark model")
    stored = store.files(REPO_ID, commit)
    prefix = SUBFOLDER + "/"
    needed = tuple(
        sorted(
            p
            for p in stored
            if p.startswith(prefix) and p.endswith((".safetensors", "config.json", ".index.json"))
        )
    )
    return BenchRepo(
        repo_id=REPO_ID,
        subfolder=SUBFOLDER,
        commit=commit,
        fingerprint=meta["fingerprint"],
        needed=needed,
        bytes_needed=sum(stored[p].size for p in needed),
        bytes_repo=sum(f.size for f in stored.values()),
        shards=sum(1 for p in needed if p.endswith(".safetensors")),
        legacy_bin=legacy_bin,
    )
