"""Settings: arguments and environment variables folded into one frozen object at call time.

huggingface_hub reads its environment once, at import; we read ours on every call so a test
or a launcher that sets ``HF_HOME`` after import is obeyed, and we pass the values to
huggingface_hub explicitly (``cache_dir=``, ``endpoint=``) so both always agree.

========================================  ===========  ==============================================
variable                                  default      meaning
========================================  ===========  ==============================================
``HF_HUB_CACHE`` / ``HF_HOME``            ~/.cache/..  the cache (``HF_HOME/hub`` unless HF_HUB_CACHE)
``HF_ENDPOINT``                           hf.co        the Hub
``HF_HUB_OFFLINE`` (``TRANSFORMERS_..``)  0            no network: warm loads only
``HUB_PREFETCH_LOCK``                     auto         ``auto``, ``flock`` or ``lease``
``HUB_PREFETCH_LOCK_TIMEOUT``             none         seconds to wait for the repo lock, then
                                                       :class:`~hub_prefetch.errors.LockTimeout`
``HUB_PREFETCH_LEASE_TTL``                30           seconds a lease outlives its last heartbeat
``HUB_PREFETCH_WAIT_LOG_INTERVAL``        10           seconds between "still waiting" log lines
``HUB_PREFETCH_HOST_ID``                  host name    this host's name in lock records (containers
                                                       that share one host name set it apart)
``HUB_PREFETCH_REVISION_TTL``             300          seconds a branch resolved to a commit is
                                                       trusted without asking the Hub (0: always ask)
``HUB_PREFETCH_MAX_ATTEMPTS``             5            attempts for transient Hub errors
``HUB_PREFETCH_BACKOFF``                  0.5          first backoff delay in seconds (doubles)
``HUB_PREFETCH_BACKOFF_MAX``              20           largest backoff delay in seconds
``HUB_PREFETCH_DOWNLOAD_WORKERS``         8            connections: files, and ranges of large files,
                                                       downloaded at once
``HUB_PREFETCH_PART_SIZE``                16 MiB       a file of at least twice this size is split into
                                                       ranges of this size over several connections
``HUB_PREFETCH_ENGINE``                   hub_prefetch ``hub_prefetch`` (our engine: no HEAD, every byte
                                                       hashed, resume, ranges) or ``huggingface_hub``
                                                       (one ``hf_hub_download`` per file)
``HUB_PREFETCH_DEEP_VERIFY``              0            sha256 every weight file when verifying
``HUB_PREFETCH_FANOUT``                   1            in a torch.distributed job, one domain downloads
                                                       and the others get the files from peers (0: each
                                                       cache domain downloads from the Hub)
========================================  ===========  ==============================================
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import InvalidRequestError

__all__ = ["EngineName", "LockBackendName", "Settings"]

LockBackendName = Literal["auto", "flock", "lease"]
EngineName = Literal["hub_prefetch", "huggingface_hub"]
_DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _env_float(name: str, default: float | None) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw or raw.lower() == "none":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise InvalidRequestError(f"{name}={raw!r} is not a number", variable=name) from exc


def _env_flag(*names: str) -> bool:
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in names)


def default_cache_dir() -> Path:
    """The hub cache folder huggingface_hub would use, computed from the environment now."""
    explicit = os.environ.get("HF_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(os.path.expandvars(home)).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path("~/.cache").expanduser()
    return base / "huggingface" / "hub"


@dataclass(frozen=True)
class Settings:
    """Everything a call needs to know about its environment, fixed for the call's duration."""

    cache_dir: Path
    endpoint: str
    offline: bool = False
    lock_backend: LockBackendName = "auto"
    lock_timeout: float | None = None
    lease_ttl: float = 30.0
    wait_log_interval: float = 10.0
    revision_ttl: float = 300.0
    max_attempts: int = 5
    backoff: float = 0.5
    backoff_max: float = 20.0
    download_workers: int = 8
    part_size: int = 16 << 20
    engine: EngineName = "hub_prefetch"
    deep_verify: bool = False
    fanout: bool = True
    host_id: str | None = None

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Build settings from the environment now; ``overrides`` that are not None win."""
        backend = os.environ.get("HUB_PREFETCH_LOCK", "auto").strip().lower() or "auto"
        if backend not in ("auto", "flock", "lease"):
            raise InvalidRequestError(
                f"HUB_PREFETCH_LOCK={backend!r}: expected auto, flock or lease", variable="HUB_PREFETCH_LOCK"
            )
        engine = os.environ.get("HUB_PREFETCH_ENGINE", "hub_prefetch").strip().lower() or "hub_prefetch"
        if engine not in ("hub_prefetch", "huggingface_hub"):
            raise InvalidRequestError(
                f"HUB_PREFETCH_ENGINE={engine!r}: expected hub_prefetch or huggingface_hub",
                variable="HUB_PREFETCH_ENGINE",
            )
        values: dict[str, Any] = {
            "cache_dir": default_cache_dir(),
            "endpoint": (os.environ.get("HF_ENDPOINT") or _DEFAULT_ENDPOINT).rstrip("/"),
            "offline": _env_flag("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"),
            "lock_backend": backend,
            "lock_timeout": _env_float("HUB_PREFETCH_LOCK_TIMEOUT", None),
            "lease_ttl": _env_float("HUB_PREFETCH_LEASE_TTL", 30.0),
            "wait_log_interval": _env_float("HUB_PREFETCH_WAIT_LOG_INTERVAL", 10.0),
            "revision_ttl": _env_float("HUB_PREFETCH_REVISION_TTL", 300.0),
            "max_attempts": int(_env_float("HUB_PREFETCH_MAX_ATTEMPTS", 5) or 1),
            "backoff": _env_float("HUB_PREFETCH_BACKOFF", 0.5),
            "backoff_max": _env_float("HUB_PREFETCH_BACKOFF_MAX", 20.0),
            "download_workers": int(_env_float("HUB_PREFETCH_DOWNLOAD_WORKERS", 8) or 1),
            "part_size": max(1 << 16, int(_env_float("HUB_PREFETCH_PART_SIZE", 16 << 20) or 0)),
            "engine": engine,
            "deep_verify": _env_flag("HUB_PREFETCH_DEEP_VERIFY"),
            "fanout": os.environ.get("HUB_PREFETCH_FANOUT", "1").strip().lower() not in _FALSE,
            "host_id": os.environ.get("HUB_PREFETCH_HOST_ID") or None,
        }
        for key, value in overrides.items():
            if key not in values:
                raise TypeError(f"unknown setting {key!r}")
            if value is not None:
                values[key] = Path(value).expanduser() if key == "cache_dir" else value
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (the object itself is frozen)."""
        return dataclasses.replace(self, **changes)
