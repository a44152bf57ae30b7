"""The builders and fingerprints the whole suite relies on: deterministic, discriminating, cheap to import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hub_prefetch.testing.repos import BERT_CONFIG, build_sharded_model, build_tokenizer, tensor_fingerprint
from hub_prefetch.testing.store import RepoStore

pytestmark = pytest.mark.timeout(120)


def test_importing_the_testing_package_loads_no_heavy_library() -> None:
    code = (
        "import sys, hub_prefetch.testing as t\n"
        "t.RepoStore, t.run_workers, t.BuiltRepo\n"
        "import hub_prefetch.testing.pytest_plugin\n"
        "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'aiohttp') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""


def test_tensor_fingerprint_sees_names_dtypes_shapes_and_values() -> None:
    torch = pytest.importorskip("torch")
    base = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(2)}
    reference = tensor_fingerprint(base)
    assert tensor_fingerprint({k: v.clone() for k, v in base.items()}) == reference
    assert tensor_fingerprint(dict(reversed(list(base.items())))) == reference  # order-free
    changed = {**base, "a": base["a"].clone()}
    changed["a"][1, 2] += 1e-6
    variants = [
        changed,
        {**base, "a": base["a"].to(torch.float64)},
        {**base, "a": base["a"].reshape(3, 2)},
        {"c": base["a"], "b": base["b"]},
        {"a": base["a"]},
    ]
    assert len({reference, *(tensor_fingerprint(v) for v in variants)}) == len(variants) + 1


def test_builds_are_deterministic_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    first_cache, second_cache = tmp_path / "builds-1", tmp_path / "builds-2"
    built = []
    for cache in (first_cache, second_cache):
        monkeypatch.setenv("HUB_PREFETCH_BUILD_CACHE", str(cache))
        store = RepoStore(cache.parent / f"store-{cache.name}")
        model = build_sharded_model(store, "t/m", subfolder="enc", shards=2)
        tok = build_tokenizer(store, "t/m")
        files = store.files("t/m", store.resolve("t/m", "main") or "")
        built.append((model, tok, {p: f.sha256 for p, f in files.items()}))
    (m1, t1, f1), (m2, t2, f2) = built
    assert m1.fingerprint == m2.fingerprint and t1.fingerprint == t2.fingerprint
    assert f1 == f2  # byte for byte, built twice from scratch
    assert sum(p.endswith(".safetensors") for p in m1.files) == 2
    assert {"enc/config.json", "enc/model.safetensors.index.json"} <= set(m1.files)
    # History: an initial commit, the model, the tokenizer.
    store = RepoStore(second_cache.parent / "store-builds-2")
    assert len(store.history("t/m", store.resolve("t/m", "main") or "")) == 3
    assert t2.commit == store.resolve("t/m", "main")
    # A second build with the cache warm reuses it (no torch work) and gives the same answer.
    again = build_sharded_model(RepoStore(tmp_path / "store-3"), "t/m", subfolder="enc", shards=2)
    assert again.fingerprint == m2.fingerprint


def test_config_sizes_are_not_the_defaults() -> None:
    transformers = pytest.importorskip("transformers")
    defaults = transformers.BertConfig()
    assert all(getattr(defaults, k) != v for k, v in BERT_CONFIG.items() if k != "num_attention_heads")
