"""Loaders that cannot race: the protected path on real transformers/diffusers, many workers, many runs,
forced partial-cache shapes, and errors that must not be retried."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest

import hub_prefetch
from hub_prefetch.testing.repos import BuiltRepo, tensor_fingerprint
from hub_prefetch.testing.workers import WorkerPool
from tests.support.slowfs import ENV as SLOW_REFS

OLD_STACK = tuple(int(p) for p in huggingface_hub.__version__.split(".")[:2]) < (1, 31)
PROTECTED = "hub_prefetch.testing.protected_targets:protected_from_pretrained"
PATCHED = "hub_prefetch.testing.protected_targets:patched_plain_from_pretrained"
PLAIN = "hub_prefetch.testing.targets:plain_from_pretrained"


def _needed(hub_store, built: BuiltRepo) -> dict[str, int]:
    listing = hub_store.files(built.repo_id, built.commit)
    return {p: listing[p].size for p in built.files if p.startswith(built.subfolder + "/")}


def _runs(target, built, hub, hub_store, hf_env, tmp_path, *, workers, runs, label):
    """Run ``runs`` cold-cache rounds of ``workers`` processes; return per-run figures."""
    needed = _needed(hub_store, built)

    def kwargs(run: int) -> dict[str, str]:
        cache = tmp_path / f"{label}-{run:02d}"
        cache.mkdir()
        return {"repo_id": built.repo_id, "subfolder": built.subfolder, "cache_dir": str(cache)}

    figures = []
    with WorkerPool(target, kwargs(0), n=workers, env=hf_env, timeout=300) as pool:
        for run in range(runs):
            if run:
                pool.next_round(kwargs(run))
            pool.wait_ready()
            hub.reset_log()
            pool.go()
            results = pool.round_results()
            served = sum(hub.bytes_served(p) for p in needed)
            figures.append(
                {
                    "failed": [f"{r.error_type}: {(r.error or '')[:200]}" for r in results if not r.ok],
                    "wrong": sum(1 for r in results if r.ok and r.value["fingerprint"] != built.fingerprint),
                    "all_ready_s": max(r.t_end for r in results) - min(r.t_start for r in results),
                    "bytes_ratio": served / sum(needed.values()),
                }
            )
    return figures


def _summary(label, figures):
    failed_runs = sum(1 for f in figures if f["failed"])
    failed_workers = sum(len(f["failed"]) for f in figures)
    ready = sorted(f["all_ready_s"] for f in figures)
    median = ready[len(ready) // 2]
    ratio = sum(f["bytes_ratio"] for f in figures) / len(figures)
    print(
        f"\n{label}: {len(figures)} runs, failed runs {failed_runs}, failed workers {failed_workers}, "
        f"wrong tensors {sum(f['wrong'] for f in figures)}, median all-ready {median:.2f} s, "
        f"bytes served / needed {ratio:.2f}x"
    )
    return median, ratio


# The suite runs a few cold rounds; the full-size rounds (old stack: 8 and 32 workers x 20 runs, new stack:
# 8 x 10) are `soak` cases, run by `make soak` (pytest -m soak on both stacks).
_COLD_SIZES = (
    [(8, 3), pytest.param(8, 20, marks=pytest.mark.soak), pytest.param(32, 20, marks=pytest.mark.soak)]
    if OLD_STACK
    else [(4, 3), pytest.param(8, 10, marks=pytest.mark.soak)]
)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("workers,runs", _COLD_SIZES)
def test_protected_loader_never_fails_on_a_cold_cache(
    local_hub, hub_store, built_repos, hf_env, tmp_path, workers, runs
):
    built = built_repos["sharded"]
    if not OLD_STACK:
        local_hub.set_bandwidth(8 * 1024 * 1024)  # the new stack: same, with a limited link
    # The slow-filesystem knob that makes plain loads race on a quiet machine (test_upstream_race.py).
    env = {**hf_env, SLOW_REFS: "0.02"}
    figures = _runs(
        PROTECTED, built, local_hub, hub_store, env, tmp_path, workers=workers, runs=runs, label="p"
    )
    _summary(f"protected, {workers} workers, huggingface_hub {huggingface_hub.__version__}", figures)
    assert [f["failed"] for f in figures if f["failed"]] == []
    assert sum(f["wrong"] for f in figures) == 0
    # exactly one download per cache: every needed byte served once per run, no more
    assert all(f["bytes_ratio"] == pytest.approx(1.0) for f in figures), [f["bytes_ratio"] for f in figures]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "workers,runs",
    [(2, 2), pytest.param(8, 6, marks=pytest.mark.soak)],  # full size: `make soak`
)
def test_plain_vs_protected_side_by_side(local_hub, hub_store, built_repos, hf_env, tmp_path, workers, runs):
    """The figures for the issue note: failures, time to all-ready and bytes, plain vs protected."""
    built = built_repos["sharded"]
    env = {**hf_env, SLOW_REFS: "0.02"}  # the slow-filesystem knob: the old stack's plain race shows
    plain = _runs(
        PLAIN, built, local_hub, hub_store, env, tmp_path, workers=workers, runs=runs, label="plain"
    )
    prot = _runs(
        PROTECTED, built, local_hub, hub_store, env, tmp_path, workers=workers, runs=runs, label="prot"
    )
    plain_t, plain_b = _summary(f"plain, {workers} workers", plain)
    prot_t, prot_b = _summary(f"protected, {workers} workers", prot)
    print(
        f"all-ready protected / plain = {prot_t / plain_t:.2f}; "
        f"bytes protected / plain = {prot_b / plain_b:.2f}"
    )
    assert all(not f["failed"] for f in prot)
    assert prot_b == pytest.approx(1.0)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "workers,runs",
    [(3, 3), pytest.param(8, 8, marks=pytest.mark.soak)],  # full size: `make soak`
)
def test_opt_in_patch_makes_unmodified_loader_code_safe(
    local_hub, hub_store, built_repos, hf_env, tmp_path, workers, runs
):
    built = built_repos["sharded"]
    figures = _runs(
        PATCHED, built, local_hub, hub_store, hf_env, tmp_path, workers=workers, runs=runs, label="patched"
    )
    _summary(f"plain code under protected_loads(), {workers} workers", figures)
    assert [f["failed"] for f in figures if f["failed"]] == []
    assert sum(f["wrong"] for f in figures) == 0
    assert all(f["bytes_ratio"] == pytest.approx(1.0) for f in figures)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("workers", [2, pytest.param(4, marks=pytest.mark.soak)])  # full size: `make soak`
def test_whole_pipeline_with_several_workers(local_hub, built_repos, hf_env, workers):
    from hub_prefetch.testing import run_workers

    local_hub.set_bandwidth(8 * 1024 * 1024)
    results = run_workers(
        "hub_prefetch.testing.protected_targets:protected_pipeline",
        {"repo_id": "tiny/sd-pipe"},
        n=workers,
        env=hf_env,
        timeout=300,
        preload=("diffusers",),
    )
    assert all(r.ok for r in results), [(r.error_type, r.error) for r in results]
    for name in ("unet", "vae", "text_encoder"):
        expected = built_repos[f"sd/{name}"].fingerprint
        assert {r.value["fingerprints"][name] for r in results} == {expected}
    assert len({r.value["commit"] for r in results}) == 1
    for record in local_hub.requests():
        if record.kind == "get" and record.filename and record.filename.endswith(".safetensors"):
            assert local_hub.times_served(record.filename) == 1


# ------------------------------------------------------------------ forced shapes, in one process


class _Factory:
    """Wraps a real ``from_pretrained``; ``before_first`` damages the cache right before the first load."""

    def __init__(self, real, before_first=None, first_kwargs=None):
        self.real, self.before_first, self.first_kwargs, self.calls = real, before_first, first_kwargs, 0

    def __call__(self, model, **kwargs):
        self.calls += 1
        if self.calls == 1:
            if self.before_first:
                self.before_first(kwargs)
            kwargs = {**kwargs, **(self.first_kwargs or {})}
        return self.real(model, **kwargs)


def _snapshot(hf_cache: Path, built: BuiltRepo) -> Path:
    return hf_cache / ("models--" + built.repo_id.replace("/", "--")) / "snapshots" / built.commit


@pytest.mark.parametrize("victim", ["model-00002-of-00003.safetensors", "config.json"])
def test_file_vanishing_before_the_load_is_healed_by_refetching_it(local_hub, built_repos, hf_cache, victim):
    from transformers import AutoModel

    built = built_repos["sharded"]
    path = f"{built.subfolder}/{victim}"

    def evict(_kwargs):
        target = _snapshot(hf_cache, built) / path
        target.resolve().unlink()
        target.unlink()
        local_hub.reset_log()

    factory = _Factory(AutoModel.from_pretrained, before_first=evict)
    model = hub_prefetch.from_pretrained_with_prefetch(
        factory,
        built.repo_id,
        subfolder=built.subfolder,
        prefetch_list=[built.subfolder],
        cache_dir=str(hf_cache),
    )
    assert factory.calls == 2
    assert tensor_fingerprint(model) == built.fingerprint
    assert local_hub.times_served(path) == 1
    assert local_hub.counts()["get"] == 1  # only the vanished file came again


def test_mismatched_sizes_after_a_defaulted_config_is_healed(local_hub, built_repos, hf_cache):
    from transformers import BertConfig, BertModel

    built = built_repos["sharded"]
    # First load gets a default config, exactly what transformers does when config.json is not there yet.
    factory = _Factory(BertModel.from_pretrained, first_kwargs={"config": BertConfig()})
    model = hub_prefetch.from_pretrained_with_prefetch(
        factory,
        built.repo_id,
        subfolder=built.subfolder,
        prefetch_list=[built.subfolder],
        cache_dir=str(hf_cache),
    )
    assert factory.calls == 2
    assert tensor_fingerprint(model) == built.fingerprint


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        ValueError("Unrecognized model in tiny/sharded-bert. Should have a `model_type` key"),
        OSError("Incorrect path_or_model_id: 'x'. Please provide either the path to a local folder"),
    ],
)
def test_non_healable_errors_are_raised_after_exactly_one_attempt(local_hub, built_repos, hf_cache, error):
    built = built_repos["sharded"]
    calls = 0

    def factory(model, **kwargs):
        nonlocal calls
        calls += 1
        raise error

    with pytest.raises(type(error)) as info:
        hub_prefetch.from_pretrained_with_prefetch(
            factory,
            built.repo_id,
            subfolder=built.subfolder,
            prefetch_list=[built.subfolder],
            cache_dir=str(hf_cache),
        )
    assert info.value is error and calls == 1


def test_no_such_repo_surfaces_from_the_loader_once(local_hub, hf_cache):
    from transformers import AutoModel

    factory = _Factory(AutoModel.from_pretrained)
    with pytest.raises(OSError, match="tiny/nope"):
        hub_prefetch.from_pretrained_with_prefetch(
            factory,
            "tiny/nope",
            subfolder="text_encoder",
            prefetch_list=["text_encoder"],
            cache_dir=str(hf_cache),
        )
    assert factory.calls == 1


def test_a_file_the_repo_does_not_have_is_not_retried(local_hub, built_repos, hf_cache):
    built = built_repos["sharded"]
    calls = 0

    def factory(model, **kwargs):
        nonlocal calls
        calls += 1
        raise OSError(
            f"{model} does not appear to have a file named {built.subfolder}/model-00009-of-00009.safetensors"
        )

    with pytest.raises(OSError, match="00009"):
        hub_prefetch.from_pretrained_with_prefetch(
            factory,
            built.repo_id,
            subfolder=built.subfolder,
            prefetch_list=[built.subfolder],
            cache_dir=str(hf_cache),
        )
    assert calls == 1


def test_local_paths_and_local_files_only_raise_on_first_failure(local_hub, built_repos, hf_cache, tmp_path):
    calls = 0

    def factory(model, **kwargs):
        nonlocal calls
        calls += 1
        raise OSError(f"{model} does not appear to have a file named config.json")

    for model, lfo in [(str(tmp_path), False), (built_repos["sharded"].repo_id, True)]:
        calls = 0
        with pytest.raises(OSError):
            hub_prefetch.from_pretrained_with_prefetch(
                factory, model, subfolder="x", prefetch_list=[], local_files_only=lfo
            )
        assert calls == 1
    assert sum(local_hub.counts().values()) == 0


def test_tokenizer_and_scheduler_through_the_protected_path(local_hub, built_repos, hf_cache):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer

    tok = hub_prefetch.from_pretrained_with_prefetch(
        AutoTokenizer.from_pretrained, "tiny/sharded-bert", subfolder="tokenizer", cache_dir=str(hf_cache)
    )
    assert tok("hello world")["input_ids"]
    sched = hub_prefetch.from_pretrained_with_prefetch(
        DDPMScheduler.from_pretrained, "tiny/sd-pipe", subfolder="scheduler", cache_dir=str(hf_cache)
    )
    assert sched.config.num_train_timesteps > 0
    unet = hub_prefetch.from_pretrained_with_prefetch(
        UNet2DConditionModel.from_pretrained, "tiny/sd-pipe", subfolder="unet", cache_dir=str(hf_cache)
    )
    assert tensor_fingerprint(unet) == built_repos["sd/unet"].fingerprint


def test_patched_config_load_fetches_no_weights(local_hub, built_repos, hf_cache):
    from transformers import AutoConfig

    built = built_repos["root"]
    with hub_prefetch.protected_loads() as patched:
        assert "transformers.models.auto.configuration_auto.AutoConfig" in patched
        config = AutoConfig.from_pretrained(built.repo_id, cache_dir=str(hf_cache))
    assert config.hidden_size != 768  # the repo's real, non-default config
    gets = [r.filename for r in local_hub.requests() if r.kind == "get"]
    assert gets and not [g for g in gets if g.endswith(".safetensors")]
    original = AutoConfig.__dict__["from_pretrained"].__func__
    assert original.__name__ == "from_pretrained"
    assert not hasattr(original, "__wrapped__")  # uninstalled
