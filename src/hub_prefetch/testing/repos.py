"""Deterministic builders of tiny but real Hub repos, written into a :class:`RepoStore`.

Every file is real ``save_pretrained`` output of ``transformers`` / ``diffusers`` with fixed seeds, so a
loader that fetches the wrong revision, misses a shard or falls back to a default config fails loudly:
the configs use non-default sizes (a default config cannot load these weights) and
:attr:`BuiltRepo.fingerprint` is the hash of the exact tensors that were saved.

Building costs seconds (importing torch); the output is cached on disk
(:mod:`~hub_prefetch.testing.buildcache`), so it is paid once per stack.

Each repo gets real history: a first commit with ``.gitattributes`` and ``README.md``, then one commit
per builder call adding its files.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .buildcache import cached_build, folder_files
from .fingerprints import tensor_fingerprint, tokenizer_fingerprint

if TYPE_CHECKING:
    from .store import RepoStore

__all__ = [
    "BuiltRepo",
    "build_diffusers_pipeline",
    "build_gated_repo",
    "build_sharded_model",
    "build_tokenizer",
    "build_variant_repo",
    "tensor_fingerprint",
    "tokenizer_fingerprint",
]


def _lib(name: str) -> Any:
    """Import a heavy library on first use, typed ``Any``: only builders that run pay for torch."""
    return importlib.import_module(name)


#: Non-default sizes of the tiny BERT: a ``BertConfig()`` fallback would not fit these weights.
BERT_CONFIG: dict[str, Any] = {
    "vocab_size": 2000,
    "hidden_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 192,
    "max_position_embeddings": 128,
}

_TEXT = (
    "the quick brown fox jumps over lazy dog a hub model loads from many processes at once "
    "safe cache download shard lock wait verify repair snapshot commit revision token"
)
_WORDS = tuple(_TEXT.split())

GITATTRIBUTES = "".join(
    f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n"
    for suffix in (".bin", ".ckpt", ".h5", ".model", ".msgpack", ".onnx", ".pt", ".pth", ".safetensors")
)


@dataclass(frozen=True)
class BuiltRepo:
    """What a builder put in the store.

    ``commit`` is the commit that added ``files`` (paths in the repo, sorted); the branch may have moved
    on since. ``fingerprint`` identifies the weights (:func:`tensor_fingerprint`) or, for a tokenizer,
    its vocabulary (:func:`tokenizer_fingerprint`). ``variants`` maps a variant name (``"fp16"``) to the
    fingerprint of that variant's weights.
    """

    repo_id: str
    commit: str
    subfolder: str
    fingerprint: str
    files: tuple[str, ...]
    variants: tuple[tuple[str, str], ...] = ()
    gated: bool = False
    token: str | None = None


def _quiet() -> None:
    """Silence progress bars and advisory warnings of the libraries while building."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    transformers = _lib("transformers")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    with contextlib.suppress(ImportError):
        diffusers = _lib("diffusers")
        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()


def _ensure_repo(store: RepoStore, repo_id: str, *, gated: bool = False, token: str | None = None) -> None:
    """Create the repo with a first commit (``.gitattributes`` + README) unless it exists."""
    if store.resolve(repo_id, "main") is not None:
        return
    store.create_repo(repo_id, gated=gated, token=token)
    readme = f"# {repo_id}\n\nA tiny repo built by hub_prefetch.testing.repos for tests. Not a real model.\n"
    store.commit(
        repo_id,
        {".gitattributes": GITATTRIBUTES, "README.md": readme},
        message="initial commit",
    )


def _commit_folder(
    store: RepoStore, repo_id: str, folder: Path, path_in_repo: str, message: str, *, skip: Iterable[str] = ()
) -> tuple[str, tuple[str, ...]]:
    prefix = f"{path_in_repo.strip('/')}/" if path_in_repo.strip("/") else ""
    skipped = set(skip)
    files = {f"{prefix}{rel}": path for rel, path in folder_files(folder).items() if rel not in skipped}
    commit = store.commit(repo_id, files, message=message)
    return commit, tuple(sorted(files))


# --------------------------------------------------------------------------------------------- models


def _tiny_bert(seed: int) -> Any:
    torch = _lib("torch")
    transformers = _lib("transformers")

    torch.manual_seed(seed)
    model = transformers.BertModel(transformers.BertConfig(**BERT_CONFIG))
    model.eval()
    return model


def _count_shards(folder: Path) -> int:
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return 1
    return len(set(json.loads(index.read_text())["weight_map"].values()))


def _save_sharded(model: Any, folder: Path, shards: int) -> None:
    """``save_pretrained`` with the ``max_shard_size`` that yields exactly ``shards`` files.

    transformers packs whole tensors greedily, so the count falls as the limit grows: bisect on it.
    """
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if shards <= 1:
        model.save_pretrained(folder, max_shard_size=2 * total)
        return
    lo, hi = 1024, total
    found = None
    while lo <= hi:
        mid = (lo + hi) // 2
        probe = folder.parent / f"{folder.name}.probe"
        shutil.rmtree(probe, ignore_errors=True)
        model.save_pretrained(probe, max_shard_size=mid)
        count = _count_shards(probe)
        shutil.rmtree(probe, ignore_errors=True)
        if count == shards:
            found = mid
            break
        if count > shards:
            lo = mid + 1
        else:
            hi = mid - 1
    if found is None:
        raise ValueError(f"cannot split the tiny model into exactly {shards} shards")
    model.save_pretrained(folder, max_shard_size=found)


def _build_bert(folder: Path, *, seed: int, shards: int) -> dict[str, Any]:
    _quiet()
    model = _tiny_bert(seed)
    _save_sharded(model, folder, shards)
    return {"fingerprint": tensor_fingerprint(model)}


def build_sharded_model(
    store: RepoStore,
    repo_id: str = "tiny/sharded-bert",
    *,
    subfolder: str = "text_encoder",
    shards: int = 3,
    seed: int = 0,
) -> BuiltRepo:
    """A tiny ``BertModel`` (non-default sizes, see :data:`BERT_CONFIG`) saved in ``shards`` safetensors
    shards + ``model.safetensors.index.json`` + ``config.json`` under ``subfolder`` ("" = repo root).
    """
    folder, meta = cached_build(f"bert-s{seed}-n{shards}", lambda d: _build_bert(d, seed=seed, shards=shards))
    _ensure_repo(store, repo_id)
    commit, files = _commit_folder(
        store, repo_id, folder, subfolder, f"add {subfolder or 'model'} ({shards} shards)"
    )
    return BuiltRepo(repo_id, commit, subfolder, meta["fingerprint"], files)


def _build_bert_tokenizer(folder: Path) -> dict[str, Any]:
    _quiet()
    transformers = _lib("transformers")

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = "abcdefghijklmnopqrstuvwxyz"
    # dict.fromkeys: a word may also be a letter ("a"); a duplicate would leave a hole in the ids.
    tokens = list(
        dict.fromkeys(
            [*specials, *sorted(_WORDS), *letters, *(f"##{c}" for c in letters), ".", ",", "!", "?"]
        )
    )
    tokenizer = transformers.BertTokenizer(
        vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True, model_max_length=128
    )
    tokenizer.save_pretrained(folder)
    # The classic sidecar: older loaders and the file selection of real repos both see it.
    (folder / "vocab.txt").write_text("".join(f"{t}\n" for t in tokens))
    return {"fingerprint": tokenizer_fingerprint(tokenizer)}


def build_tokenizer(store: RepoStore, repo_id: str, *, subfolder: str = "tokenizer") -> BuiltRepo:
    """A WordPiece ``BertTokenizer`` over a small fixed vocabulary, saved under ``subfolder``."""
    folder, meta = cached_build("bert-tokenizer", _build_bert_tokenizer)
    _ensure_repo(store, repo_id)
    commit, files = _commit_folder(store, repo_id, folder, subfolder, f"add {subfolder or 'tokenizer'}")
    return BuiltRepo(repo_id, commit, subfolder, meta["fingerprint"], files)


def _build_variants(folder: Path) -> dict[str, Any]:
    _quiet()
    torch = _lib("torch")

    model = _tiny_bert(seed=1)
    model.save_pretrained(folder)
    half = _tiny_bert(seed=1).half()
    probe = folder.parent / f"{folder.name}.fp16"
    half.save_pretrained(probe, variant="fp16")
    shutil.move(str(probe / "model.fp16.safetensors"), folder / "model.fp16.safetensors")
    shutil.rmtree(probe)
    # transformers 5 no longer writes .bin; real repos still carry them beside the safetensors.
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    torch.save(half.state_dict(), folder / "pytorch_model.fp16.bin")
    return {"fingerprint": tensor_fingerprint(model), "variants": {"fp16": tensor_fingerprint(half)}}


def build_variant_repo(
    store: RepoStore, repo_id: str = "tiny/variants", *, subfolder: str = "text_encoder"
) -> BuiltRepo:
    """A tiny ``BertModel`` under ``subfolder`` as ``model.safetensors``, ``model.fp16.safetensors``,
    ``pytorch_model.bin`` and ``pytorch_model.fp16.bin`` beside one ``config.json`` (float32).
    """
    folder, meta = cached_build("bert-variants", _build_variants)
    _ensure_repo(store, repo_id)
    commit, files = _commit_folder(
        store, repo_id, folder, subfolder, "add weights in two dtypes and two formats"
    )
    variants = tuple(sorted(meta["variants"].items()))
    return BuiltRepo(repo_id, commit, subfolder, meta["fingerprint"], files, variants=variants)


def build_gated_repo(
    store: RepoStore,
    repo_id: str = "tiny/gated",
    token: str = "hf_secret",  # noqa: S107 - a test token the local Hub checks
) -> BuiltRepo:
    """A gated repo (only ``token`` may read it) holding a tiny ``BertModel`` at its root, one shard."""
    folder, meta = cached_build("bert-s2-n1", lambda d: _build_bert(d, seed=2, shards=1))
    _ensure_repo(store, repo_id, gated=True, token=token)
    commit, files = _commit_folder(store, repo_id, folder, "", "add model")
    return BuiltRepo(repo_id, commit, "", meta["fingerprint"], files, gated=True, token=token)


# ------------------------------------------------------------------------------------------ diffusers

_CLIP_MERGES = ("t h", "th e</w>", "o n</w>", "a t</w>", "i n", "e r</w>", "o u", "a n")


def _clip_tokenizer() -> Any:
    transformers = _lib("transformers")

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in [*letters, *(f"{c}</w>" for c in letters), *(m.replace(" ", "") for m in _CLIP_MERGES)]:
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split()) for m in _CLIP_MERGES]
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _build_pipeline(folder: Path) -> dict[str, Any]:
    _quiet()
    torch = _lib("torch")
    diffusers = _lib("diffusers")
    transformers = _lib("transformers")

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    torch.manual_seed(0)
    text_encoder = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=3,
            vocab_size=1000,
            max_position_embeddings=77,
        )
    )
    tokenizer = _clip_tokenizer()
    scheduler = diffusers.DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = diffusers.StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return {
        "fingerprints": {
            "unet": tensor_fingerprint(unet),
            "vae": tensor_fingerprint(vae),
            "text_encoder": tensor_fingerprint(text_encoder),
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "scheduler": hashlib.sha256(
                (folder / "scheduler" / "scheduler_config.json").read_bytes()
            ).hexdigest(),
            "model_index": hashlib.sha256((folder / "model_index.json").read_bytes()).hexdigest(),
        }
    }


def build_diffusers_pipeline(store: RepoStore, repo_id: str = "tiny/sd-pipe") -> dict[str, BuiltRepo]:
    """A tiny ``StableDiffusionPipeline`` (no safety checker, no feature extractor) loadable with
    ``DiffusionPipeline.from_pretrained``.

    Returns one entry per component (``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``)
    plus ``model_index`` (subfolder ``""``, the root ``model_index.json``); the union of their ``files``
    is the whole pipeline.
    """
    folder, meta = cached_build("sd-pipe", _build_pipeline)
    _ensure_repo(store, repo_id)
    commit, files = _commit_folder(store, repo_id, folder, "", "add pipeline")
    fingerprints: Mapping[str, str] = meta["fingerprints"]
    out: dict[str, BuiltRepo] = {}
    for name, fingerprint in fingerprints.items():
        sub = "" if name == "model_index" else name
        own = tuple(f for f in files if (f.startswith(f"{sub}/") if sub else f == "model_index.json"))
        out[name] = BuiltRepo(repo_id, commit, sub, fingerprint, own)
    return out
