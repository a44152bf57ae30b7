"""pytest fixtures: a session-wide local Hub serving tiny real repos, and a fresh HF cache per test.

Load it from your ``conftest.py``. huggingface_hub reads ``HF_ENDPOINT`` once, at import, and importing
this plugin imports hub_prefetch (and so huggingface_hub): set the endpoint first, stdlib only::

    import os, socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{s.getsockname()[1]}"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    os.environ.pop("HF_TOKEN", None)     # workers inherit os.environ: no real token, no offline flag
    os.environ.pop("HF_HUB_OFFLINE", None)
    pytest_plugins = ["hub_prefetch.testing.pytest_plugin"]

The session server binds the port named by ``HF_ENDPOINT``.

Fixtures:

``hub_store`` (session)    a :class:`RepoStore` holding every repo of ``built_repos``
``built_repos`` (session)  name -> :class:`BuiltRepo`; ``commit`` is the head of ``main`` after the build
``local_hub`` (session)    a running :class:`LocalHub`; faults, throttling and its log reset around each test
``hf_cache`` (function)    this test's own hub cache folder (``HF_HUB_CACHE``); also patched into the
                           environment and huggingface_hub's constants for in-process loads
``hf_env`` (function)      the environment for worker processes: that cache, the local Hub, quiet libraries

Names in ``built_repos``: ``sharded`` (``tiny/sharded-bert``, ``text_encoder``, 3 shards), ``tokenizer``
(same repo, ``tokenizer``), ``root`` (``tiny/root-bert``, 2 shards at the root), ``variants``, ``gated``
(token ``hf_secret``) and ``sd/<component>`` for ``tiny/sd-pipe`` (``sd/model_index`` for the root file).
"""

# ruff: noqa: PLC0415  (the local Hub and the store import aiohttp/filelock only when a fixture needs them)
from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

from .harness import QUIET_ENV
from .repos import (
    BuiltRepo,
    build_diffusers_pipeline,
    build_gated_repo,
    build_sharded_model,
    build_tokenizer,
    build_variant_repo,
)

if TYPE_CHECKING:
    from .hub.client import LocalHub
    from .store import RepoStore

__all__ = [
    "GATED_TOKEN",
    "build_all",
    "built_repos",
    "hf_cache",
    "hf_env",
    "hub_store",
    "local_hub",
    "quiet_env",
]

GATED_TOKEN = "hf_secret"  # noqa: S105 - a test token the local Hub checks, not a credential


def quiet_env() -> dict[str, str]:
    return dict(QUIET_ENV)


def build_all(store: RepoStore) -> dict[str, BuiltRepo]:
    """Build every standard repo into ``store``; ``commit`` of each entry is its repo's final ``main``."""
    built: dict[str, BuiltRepo] = {
        "sharded": build_sharded_model(store, "tiny/sharded-bert", subfolder="text_encoder", shards=3),
        "tokenizer": build_tokenizer(store, "tiny/sharded-bert", subfolder="tokenizer"),
        "root": build_sharded_model(store, "tiny/root-bert", subfolder="", shards=2),
        "variants": build_variant_repo(store, "tiny/variants"),
        "gated": build_gated_repo(store, "tiny/gated", token=GATED_TOKEN),
    }
    for name, component in build_diffusers_pipeline(store, "tiny/sd-pipe").items():
        built[f"sd/{name}"] = component
    heads = {b.repo_id: store.resolve(b.repo_id, "main") for b in built.values()}
    return {name: dataclasses.replace(b, commit=heads[b.repo_id] or b.commit) for name, b in built.items()}


def _endpoint_port() -> int | None:
    endpoint = os.environ.get("HF_ENDPOINT", "")
    parts = urlsplit(endpoint)
    if parts.hostname in ("127.0.0.1", "localhost") and parts.port:
        return parts.port
    return None


@pytest.fixture(scope="session")
def _hub_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[RepoStore, dict[str, BuiltRepo]]:
    from .store import RepoStore

    store = RepoStore(tmp_path_factory.mktemp("hub-store"))
    return store, build_all(store)


@pytest.fixture(scope="session")
def hub_store(_hub_build: tuple[RepoStore, dict[str, BuiltRepo]]) -> RepoStore:
    return _hub_build[0]


@pytest.fixture(scope="session")
def built_repos(_hub_build: tuple[RepoStore, dict[str, BuiltRepo]]) -> dict[str, BuiltRepo]:
    return dict(_hub_build[1])


@pytest.fixture(scope="session")
def local_hub(hub_store: RepoStore) -> Iterator[LocalHub]:
    from .hub.client import LocalHub

    port = _endpoint_port()
    if port is None:
        pytest.fail(
            "HF_ENDPOINT must name http://127.0.0.1:<port> before huggingface_hub is imported "
            "(see hub_prefetch.testing.pytest_plugin's docstring)",
            pytrace=False,
        )
    hub = LocalHub(hub_store, port=port).start()
    constants = sys.modules.get("huggingface_hub.constants")
    endpoint = getattr(constants, "ENDPOINT", hub.url)
    if endpoint.rstrip("/") != hub.url.rstrip("/"):
        hub.stop()
        pytest.fail(
            f"huggingface_hub was imported with HF_ENDPOINT={endpoint!r}, but the local Hub is {hub.url}: "
            "set HF_ENDPOINT in conftest.py before anything imports huggingface_hub",
            pytrace=False,
        )
    try:
        yield hub
    finally:
        hub.stop()


def _reset(hub: LocalHub) -> None:
    hub.clear_faults()
    hub.set_bandwidth(None)
    hub.set_metadata_latency(0.0)
    hub.reset_log()


@pytest.fixture(autouse=True)
def _reset_local_hub(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts with a quiet, fault-free Hub and an empty request log; only if it uses the Hub."""
    if "local_hub" not in request.fixturenames:
        yield
        return
    hub: LocalHub = request.getfixturevalue("local_hub")
    _reset(hub)
    yield
    _reset(hub)


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hf-home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        # huggingface_hub froze these at import; its download functions read them at call time.
        monkeypatch.setattr(constants, "HF_HOME", str(home))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def hf_env(hf_cache: Path, local_hub: LocalHub) -> dict[str, str]:
    """Plain strings only, so it also works as ``subprocess.run(env={**os.environ, **hf_env})``.

    Tokens and offline flags of the developer's shell are dropped by ``tests/conftest.py`` (stdlib-only,
    before anything imports huggingface_hub), so workers inheriting ``os.environ`` never see them.
    """
    env = quiet_env()
    env.update(
        {
            "HF_HOME": str(hf_cache.parent),
            "HF_HUB_CACHE": str(hf_cache),
            "HF_ENDPOINT": local_hub.url,
        }
    )
    return env
