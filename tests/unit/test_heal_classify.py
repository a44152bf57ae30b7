from __future__ import annotations

import pickle

import pytest

from hub_prefetch import errors
from hub_prefetch.heal import LoadFailure, classify_load_error
from hub_prefetch.reference import retry_on_missing_shard

MISSING = OSError(
    "tiny/repo does not appear to have a file named text_encoder/model-00002-of-00002.safetensors. "
    "Checkout 'https://huggingface.co/tiny/repo/tree/main' for available files."
)
MISMATCH = RuntimeError(
    "Error(s) in loading state_dict for BertModel:\n\tsize mismatch ...\n"
    "You set `ignore_mismatched_sizes` to `False`, thus raising an error. "
    "For details look at the above report!"
)


def test_missing_shard_shape():
    assert classify_load_error(MISSING) == (
        LoadFailure.MISSING_FILE,
        "text_encoder/model-00002-of-00002.safetensors",
    )


def test_mismatched_sizes_shape():
    assert classify_load_error(MISMATCH) == (LoadFailure.MISMATCHED_SIZES, None)


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        OSError("Incorrect path_or_model_id"),
        ValueError("Unrecognized configuration class"),
        errors.RepoNotFound("no such repo"),
        RuntimeError("size mismatch for x"),
    ],
)
def test_other_errors_are_not_healable(exc):
    assert classify_load_error(exc) is None


def test_retry_on_missing_shard_retries_only_that_shape():
    sleeps: list[float] = []
    calls = 0

    def load():
        nonlocal calls
        calls += 1
        if calls < 3:
            raise MISSING
        return "model"

    assert (
        retry_on_missing_shard(load, max_attempts=5, sleep=sleeps.append, initial_delay=1, max_delay=3)
        == "model"
    )
    assert calls == 3 and len(sleeps) == 2 and all(0 <= s <= 3 for s in sleeps)

    calls = 0

    def oom():
        nonlocal calls
        calls += 1
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError):
        retry_on_missing_shard(oom, sleep=sleeps.append)
    assert calls == 1


def test_retry_on_missing_shard_gives_up_after_max_attempts():
    calls = 0

    def load():
        nonlocal calls
        calls += 1
        raise MISSING

    with pytest.raises(OSError, match="does not appear"):
        retry_on_missing_shard(load, max_attempts=3, sleep=lambda s: None)
    assert calls == 3


@pytest.mark.parametrize(
    "exc",
    [
        errors.LockTimeout("t", lock_path="/x", holder={"pid": 1}, waited_s=3.0),
        errors.IncompleteSnapshotError("bad", problems=["a: size"]),
        errors.UnknownSubfolderError("u", subfolders=["x"]),
    ],
)
def test_errors_pickle_with_their_facts(exc):
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc) and str(back) == str(exc) and back.facts == exc.facts


def test_error_tree_roots():
    assert issubclass(errors.LockTimeout, TimeoutError)
    assert issubclass(errors.RepoNotFound, OSError)
    assert issubclass(errors.InvalidRequestError, ValueError)
    assert issubclass(errors.ChecksumMismatchError, errors.IncompleteSnapshotError)
    classes = [getattr(errors, n) for n in errors.__all__ if isinstance(getattr(errors, n), type)]
    assert len(classes) == 17 and all(issubclass(c, errors.HubPrefetchError) for c in classes)


def test_cache_miss_of_a_pinned_offline_load_is_the_missing_file_shape():
    exc = OSError(
        "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in the "
        "cached files.\nCheck your internet connection or see how to run the library in offline mode."
    )
    assert classify_load_error(exc) == (LoadFailure.MISSING_FILE, None)


def test_retry_on_missing_shard_waits_by_the_one_backoff_setting(monkeypatch):
    monkeypatch.setenv("HUB_PREFETCH_BACKOFF", "0.25")
    monkeypatch.setenv("HUB_PREFETCH_BACKOFF_MAX", "0.5")
    sleeps: list[float] = []

    def load():
        raise MISSING

    with pytest.raises(OSError, match="does not appear"):
        retry_on_missing_shard(load, max_attempts=6, sleep=sleeps.append)
    # Full jitter under a cap that doubles from HUB_PREFETCH_BACKOFF up to HUB_PREFETCH_BACKOFF_MAX.
    assert len(sleeps) == 5 and sleeps[0] <= 0.25 and all(0 <= s <= 0.5 for s in sleeps), sleeps


def test_unknown_facts_are_refused_and_declared_ones_are_attributes():
    with pytest.raises(TypeError):
        errors.CacheWriteError("x", lock_path="/nope")  # type: ignore[call-arg]
    exc = errors.CacheWriteError("x", path="/c", errno=28, repo_id="o/m")
    assert (exc.path, exc.errno, exc.repo_id, exc.revision) == ("/c", 28, "o/m", None)
    assert exc.facts == {"path": "/c", "errno": 28, "repo_id": "o/m"}
