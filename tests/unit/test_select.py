from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub_prefetch.errors import CorruptRepoFileError, UnknownSubfolderError
from hub_prefetch.select import reference_selection, select_files

SHARDED = {
    "model_index.json": b"{}",
    "README.md": b"",
    ".gitattributes": b"",
    "text_encoder/config.json": b"{}",
    "text_encoder/model.safetensors.index.json": json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    ).encode(),
    "text_encoder/model-00001-of-00002.safetensors": b"",
    "text_encoder/model-00002-of-00002.safetensors": b"",
    "text_encoder/model-00003-of-00003.safetensors": b"",  # stale shard no index names
    "text_encoder/pytorch_model.bin": b"",
    "text_encoder/model.fp16.safetensors": b"",
    "text_encoder/nested/extra.json": b"{}",
    "tokenizer/tokenizer.json": b"{}",
    "tokenizer/vocab.txt": b"",
    "unet/config.json": b"{}",
    "unet/diffusion_pytorch_model.safetensors": b"",
    "unet/diffusion_pytorch_model.fp16.safetensors": b"",
    "unet/diffusion_pytorch_model.bin": b"",
    "unet/diffusion_pytorch_model.fp16.bin": b"",
    "vae/config.json": b"{}",
    "vae/diffusion_pytorch_model.bin": b"",
}


def _select(listing, subs, **kw):
    return select_files(listing, subs, load_index=lambda p: listing[p], **kw)


def test_sharded_subfolder_takes_index_and_named_shards_only():
    sel = _select(SHARDED, ["text_encoder"])
    assert set(sel.weights) == {
        "text_encoder/model-00001-of-00002.safetensors",
        "text_encoder/model-00002-of-00002.safetensors",
    }
    assert "text_encoder/model.safetensors.index.json" in sel.metadata
    assert "text_encoder/config.json" in sel.metadata
    assert "model_index.json" in sel.metadata  # root metadata
    assert "text_encoder/nested/extra.json" not in sel.files
    assert "README.md" not in sel.files and ".gitattributes" not in sel.files
    assert not any(f.endswith(".bin") for f in sel.files)


def test_root_metadata_can_be_left_out():
    sel = _select(SHARDED, ["tokenizer"], include_root_metadata=False)
    assert sel.files == ("tokenizer/tokenizer.json", "tokenizer/vocab.txt")


def test_variant_preferred_then_fallback_to_plain():
    sel = _select(SHARDED, ["unet", "vae"], variant="fp16")
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in sel.weights
    assert "unet/diffusion_pytorch_model.safetensors" not in sel.weights
    # vae has no fp16 files and no safetensors: plain .bin, as diffusers falls back
    assert "vae/diffusion_pytorch_model.bin" in sel.weights


def test_safetensors_over_bin_without_variant():
    sel = _select(SHARDED, ["unet"])
    assert [w for w in sel.weights if w.startswith("unet/")] == ["unet/diffusion_pytorch_model.safetensors"]


def test_all_files_takes_whole_subfolder():
    sel = _select(SHARDED, ["text_encoder"], all_files=True)
    assert {p for p in SHARDED if p.startswith("text_encoder/")} <= set(sel.files)


def test_empty_subfolders_means_root_metadata_only():
    sel = _select(SHARDED, [])
    assert sel.files == ("model_index.json",)


def test_unknown_subfolder_is_a_typed_error():
    with pytest.raises(UnknownSubfolderError) as info:
        _select(SHARDED, ["text_encoder", "nope"])
    assert info.value.subfolders == ("nope",)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "index",
    [
        b"not json",
        b"{}",
        json.dumps({"weight_map": {"a": "../../etc/passwd"}}).encode(),
        json.dumps({"weight_map": {"a": "model-00009-of-00009.safetensors"}}).encode(),
    ],
)
def test_corrupt_index_in_repo_is_a_typed_error(index):
    listing = dict(SHARDED)
    listing["text_encoder/model.safetensors.index.json"] = index
    with pytest.raises(CorruptRepoFileError):
        _select(listing, ["text_encoder"])


def test_exact_selection_saves_bytes_against_reference_patterns():
    sizes = {p: (1000 if p.endswith((".safetensors", ".bin")) else 10) for p in SHARDED}
    ours = _select(SHARDED, ["text_encoder"]).files
    ref = reference_selection(SHARDED, ["text_encoder"])
    assert set(ours) <= set(ref) | {"text_encoder/model.safetensors.index.json"}
    assert sum(sizes[p] for p in ours) < sum(sizes[p] for p in ref) / 2


names = st.text(alphabet="abcdef-_.0123456789", min_size=1, max_size=12)


@given(
    st.dictionaries(st.lists(names, min_size=1, max_size=3).map("/".join), st.just(b""), max_size=30),
    st.lists(st.sampled_from(["", "a", "b", "a/b"]), max_size=3),
)
def test_selection_never_invents_files(listing, subs):
    try:
        sel = select_files(listing, subs, load_index=lambda p: b'{"weight_map": {}}')
    except (UnknownSubfolderError, CorruptRepoFileError):
        return
    assert set(sel.files) <= set(listing)
    for f in sel.weights:
        assert f not in sel.metadata


def test_weights_false_takes_configs_and_tokenizer_files_only():
    sel = _select(SHARDED, ["text_encoder", "tokenizer"], weights=False)
    assert sel.weights == ()
    assert "text_encoder/model.safetensors.index.json" not in sel.files
    assert {"text_encoder/config.json", "tokenizer/tokenizer.json", "tokenizer/vocab.txt"} <= set(sel.files)
