"""Test session setup: the local Hub's endpoint goes into the environment before anything imports
huggingface_hub (it reads HF_ENDPOINT once, at import), then the fixtures load.

Nothing above ``pytest_plugins`` may import hub_prefetch: it would import huggingface_hub too early.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{_free_port()}"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
os.environ.pop("HF_TOKEN", None)
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.pop("TRANSFORMERS_OFFLINE", None)
# Loads that forget cache_dir / hf_cache must not touch the developer's own cache.
_hf_home = tempfile.mkdtemp(prefix="hub-prefetch-tests-hf-home-")
atexit.register(shutil.rmtree, _hf_home, ignore_errors=True)
os.environ["HF_HOME"] = _hf_home
os.environ.pop("HF_HUB_CACHE", None)

# Worker processes import this project's own targets by name ("tests.support.fault_targets:dispatch"):
# every subprocess of the session gets the repo root on its path, whatever its working directory.
_root = str(Path(__file__).resolve().parent.parent)
_path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
if _root not in _path:
    os.environ["PYTHONPATH"] = os.pathsep.join([_root, *_path])

pytest_plugins = ["hub_prefetch.testing.pytest_plugin"]


@pytest.fixture
def hf_env(hf_env: dict[str, str]) -> dict[str, str]:
    """The plugin's worker environment, plus this project's test faults: every worker preloads the
    slow-filesystem knob, which acts only where a test sets its variable (``slowfs.ENV``)."""
    from hub_prefetch.testing.harness import PRELOAD_ENV

    return {**hf_env, PRELOAD_ENV: "tests.support.slowfs:install_from_env"}
