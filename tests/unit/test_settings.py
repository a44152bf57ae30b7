from __future__ import annotations

import pytest

from hub_prefetch.errors import InvalidRequestError
from hub_prefetch.settings import Settings


def test_settings_are_read_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "a"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert Settings.from_env().cache_dir == tmp_path / "a" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "b"))
    monkeypatch.setenv("HUB_PREFETCH_LOCK", "lease")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    s = Settings.from_env()
    assert s.cache_dir == tmp_path / "b" and s.lock_backend == "lease" and s.offline


def test_arguments_win_over_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HUB_PREFETCH_LOCK_TIMEOUT", "5")
    s = Settings.from_env(cache_dir=tmp_path, lock_timeout=1.5)
    assert s.cache_dir == tmp_path and s.lock_timeout == 1.5


@pytest.mark.parametrize("var,value", [("HUB_PREFETCH_LOCK", "nfs"), ("HUB_PREFETCH_LEASE_TTL", "soon")])
def test_bad_settings_are_typed_errors(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(InvalidRequestError):
        Settings.from_env()


def test_unknown_override_is_refused():
    with pytest.raises(TypeError):
        Settings.from_env(colour="red")


def test_host_id_is_read_here(monkeypatch):
    monkeypatch.delenv("HUB_PREFETCH_HOST_ID", raising=False)
    assert Settings.from_env().host_id is None
    monkeypatch.setenv("HUB_PREFETCH_HOST_ID", "node-17")
    assert Settings.from_env().host_id == "node-17"
    assert Settings.from_env(host_id="node-3").host_id == "node-3"
