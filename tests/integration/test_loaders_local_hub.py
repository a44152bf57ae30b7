"""The real loaders of both stacks fetch the built repos from the local Hub and get the saved weights.

Nothing here uses hub_prefetch's loading code: this proves the test bench (builders, server, fixtures,
workers) is faithful enough for the rest of the suite to rely on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub_prefetch.testing import LocalHub
from hub_prefetch.testing.repos import BERT_CONFIG, BuiltRepo, tensor_fingerprint, tokenizer_fingerprint
from hub_prefetch.testing.workers import run_workers

pytestmark = pytest.mark.timeout(240)

transformers = pytest.importorskip("transformers")


def _snapshot(cache: Path, repo_id: str, commit: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / commit


def test_sharded_model_loads_the_saved_tensors_and_config(
    local_hub: LocalHub, built_repos: dict[str, BuiltRepo], hf_cache: Path
) -> None:
    built = built_repos["sharded"]
    model = transformers.AutoModel.from_pretrained(
        built.repo_id, subfolder=built.subfolder, cache_dir=hf_cache
    )
    assert tensor_fingerprint(model) == built.fingerprint
    for key, value in BERT_CONFIG.items():
        assert getattr(model.config, key) == value
    # The sizes are not the defaults: a silent fallback to BertConfig() could not load these weights.
    defaults = transformers.BertConfig()
    assert (defaults.hidden_size, defaults.vocab_size) != (model.config.hidden_size, model.config.vocab_size)
    shards = [f for f in built.files if f.endswith(".safetensors")]
    assert len(shards) == 3
    for shard in shards:
        assert local_hub.times_served(shard) == 1
        assert (_snapshot(hf_cache, built.repo_id, built.commit) / shard).is_file()
    index = json.loads(
        (
            _snapshot(hf_cache, built.repo_id, built.commit)
            / built.subfolder
            / "model.safetensors.index.json"
        ).read_text()
    )
    assert {f"{built.subfolder}/{s}" for s in index["weight_map"].values()} == set(shards)


def test_default_config_cannot_load_the_weights(built_repos: dict[str, BuiltRepo], hf_cache: Path) -> None:
    """What the healing code relies on: a default config over these shards fails loudly, not silently."""
    built = built_repos["sharded"]
    with pytest.raises((RuntimeError, ValueError), match=r"(?i)size|shape"):
        transformers.BertModel.from_pretrained(
            built.repo_id, subfolder=built.subfolder, cache_dir=hf_cache, config=transformers.BertConfig()
        )


def test_root_repo_pinned_to_a_commit(
    built_repos: dict[str, BuiltRepo], hf_cache: Path, local_hub: LocalHub
) -> None:
    built = built_repos["root"]
    model = transformers.AutoModel.from_pretrained(built.repo_id, revision=built.commit, cache_dir=hf_cache)
    assert tensor_fingerprint(model) == built.fingerprint
    assert sum(f.endswith(".safetensors") for f in built.files) == 2
    assert all(r.revision in (built.commit, None) for r in local_hub.requests() if r.kind == "get")


def test_tokenizer_encodes_a_sentence(
    built_repos: dict[str, BuiltRepo], hf_cache: Path, local_hub: LocalHub
) -> None:
    built = built_repos["tokenizer"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        built.repo_id, subfolder=built.subfolder, cache_dir=hf_cache
    )
    assert tokenizer_fingerprint(tokenizer) == built.fingerprint
    ids = tokenizer("the quick brown fox")["input_ids"]
    vocab = tokenizer.get_vocab()
    assert ids == [vocab["[CLS]"], vocab["the"], vocab["quick"], vocab["brown"], vocab["fox"], vocab["[SEP]"]]


def test_variant_selects_the_fp16_safetensors_only(
    built_repos: dict[str, BuiltRepo], hf_cache: Path, local_hub: LocalHub
) -> None:
    built = built_repos["variants"]
    model = transformers.AutoModel.from_pretrained(
        built.repo_id, subfolder=built.subfolder, variant="fp16", dtype="float16", cache_dir=hf_cache
    )
    assert tensor_fingerprint(model) == dict(built.variants)["fp16"]
    assert local_hub.times_served(f"{built.subfolder}/model.fp16.safetensors") == 1
    assert local_hub.bytes_served("*.bin") == 0
    assert local_hub.bytes_served(f"{built.subfolder}/model.safetensors") == 0


def test_gated_repo_needs_its_token(
    built_repos: dict[str, BuiltRepo], hf_cache: Path, local_hub: LocalHub
) -> None:
    built = built_repos["gated"]
    with pytest.raises(OSError, match=r"(?i)gated"):
        transformers.AutoModel.from_pretrained(built.repo_id, cache_dir=hf_cache)
    model = transformers.AutoModel.from_pretrained(built.repo_id, cache_dir=hf_cache, token=built.token)
    assert tensor_fingerprint(model) == built.fingerprint


def test_diffusers_model_from_subfolder(
    built_repos: dict[str, BuiltRepo], hf_cache: Path, local_hub: LocalHub
) -> None:
    diffusers = pytest.importorskip("diffusers")
    built = built_repos["sd/unet"]
    unet = diffusers.UNet2DConditionModel.from_pretrained(built.repo_id, subfolder="unet", cache_dir=hf_cache)
    assert tensor_fingerprint(unet) == built.fingerprint
    assert local_hub.times_served("unet/diffusion_pytorch_model.safetensors") == 1


def test_whole_pipeline_loads_then_loads_offline(
    built_repos: dict[str, BuiltRepo], hf_cache: Path, local_hub: LocalHub
) -> None:
    diffusers = pytest.importorskip("diffusers")
    repo_id = built_repos["sd/model_index"].repo_id
    pipe = diffusers.DiffusionPipeline.from_pretrained(repo_id, cache_dir=hf_cache)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    for name in ("unet", "vae", "text_encoder"):
        assert tensor_fingerprint(getattr(pipe, name)) == built_repos[f"sd/{name}"].fingerprint, name
    assert tokenizer_fingerprint(pipe.tokenizer) == built_repos["sd/tokenizer"].fingerprint
    served = {r.filename for r in local_hub.requests() if r.full_body}
    wanted = {f for name, b in built_repos.items() if name.startswith("sd/") for f in b.files}
    assert wanted <= served
    # Complete on disk: a second load needs no Hub at all.
    local_hub.reset_log()
    again = diffusers.DiffusionPipeline.from_pretrained(repo_id, cache_dir=hf_cache, local_files_only=True)
    assert tensor_fingerprint(again.unet) == built_repos["sd/unet"].fingerprint
    assert local_hub.requests() == []


# Two workers in the suite; four (the full size) are a `soak` case, run by `make soak`.
@pytest.mark.parametrize("workers", [2, pytest.param(4, marks=pytest.mark.soak)])
def test_workers_on_a_cold_cache_each_load_the_reference(
    built_repos: dict[str, BuiltRepo], hf_env: dict[str, str | None], workers: int
) -> None:
    built = built_repos["sharded"]
    results = run_workers(
        "hub_prefetch.testing.targets:plain_from_pretrained",
        {"repo_id": built.repo_id, "subfolder": built.subfolder},
        n=workers,
        env=hf_env,
        timeout=180,
    )
    assert all(r.ok for r in results), [(r.error_type, r.error) for r in results]
    assert [r.value["fingerprint"] for r in results] == [built.fingerprint] * workers
    assert all(r.value["config"]["hidden_size"] == BERT_CONFIG["hidden_size"] for r in results)


def test_workers_load_tokenizer_and_pipeline(
    built_repos: dict[str, BuiltRepo], hf_env: dict[str, str | None]
) -> None:
    tok = built_repos["tokenizer"]
    (tok_result,) = run_workers(
        "hub_prefetch.testing.targets:plain_tokenizer",
        {"repo_id": tok.repo_id, "subfolder": tok.subfolder},
        n=1,
        env=hf_env,
        timeout=120,
    )
    assert tok_result.ok, tok_result.error
    assert tok_result.value["fingerprint"] == tok.fingerprint
    pytest.importorskip("diffusers")
    results = run_workers(
        "hub_prefetch.testing.targets:plain_pipeline",
        {"repo_id": built_repos["sd/model_index"].repo_id},
        n=2,
        env=hf_env,
        timeout=180,
        preload=("diffusers",),
    )
    assert all(r.ok for r in results), [(r.error_type, r.error) for r in results]
    for r in results:
        for name in ("unet", "vae", "text_encoder", "tokenizer"):
            assert r.value["fingerprints"][name] == built_repos[f"sd/{name}"].fingerprint, name
