"""The body request for one byte range of a file: huggingface_hub's session, headers and error mapping.

No HEAD: the listing already said what each file is. The GET goes to ``resolve/<commit>/<path>`` with
the headers ``hf_hub_download`` would send (token, user agent, ``HF_ENDPOINT``), through huggingface_hub's
own ``get_session()`` (so a client factory a user set, with its proxies and certificates, applies), and
follows redirects to the CDN or Xet's bridge; the HTTP client drops ``Authorization`` when a redirect
leaves the origin. ``Accept-Encoding: identity``: a ``Range`` counts bytes of the file, never of a
compressed body.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from typing import Any

from huggingface_hub import constants, get_session, hf_hub_url, hf_raise_for_status
from huggingface_hub.utils._headers import build_hf_headers

from .. import __name__ as _package
from ..prefetch.request import Request
from .parts import Part

__all__ = ["RangeIgnored", "base_headers", "file_url", "open_part"]


@functools.cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 - once per request is cheap

    try:
        return version("hub-prefetch")
    except PackageNotFoundError:
        return "0"


class RangeIgnored(Exception):
    """The server answered a Range request with the whole file (200): the file goes over one stream."""


def file_url(req: Request, commit: str, path: str) -> str:
    return hf_hub_url(
        req.repo_id, path, repo_type=req.repo_type, revision=commit, endpoint=req.settings.endpoint
    )


def base_headers(req: Request) -> dict[str, str]:
    """What every body request of one download sends (token, user agent): built once per download, as
    huggingface_hub reads the token file and probes the environment at every call (milliseconds each,
    once per file of a 256-file repo)."""
    headers = build_hf_headers(token=req.token, library_name=_package, library_version=_version())
    headers["Accept-Encoding"] = "identity"
    return headers


def _headers(base: Mapping[str, str], part: Part, *, whole: bool) -> dict[str, str]:
    headers = dict(base)
    if not whole:
        last = "" if part.end is None else str(part.end - 1)
        headers["Range"] = f"bytes={part.offset}-{last}"
    return headers


@contextlib.contextmanager
def open_part(
    req: Request, url: str, part: Part, *, single: bool, base: Mapping[str, str] | None = None
) -> Iterator[Any]:
    """A streaming response for what ``part`` still lacks; raises huggingface_hub's typed errors.

    The first request of a single-stream file sends no ``Range``, as ``hf_hub_download`` does. ``base``:
    the headers of :func:`base_headers`, built once by the caller (else here).
    """
    whole = single and part.offset == 0
    timeout = constants.HF_HUB_DOWNLOAD_TIMEOUT
    session = get_session()
    with session.stream(
        "GET",
        url,
        headers=_headers(base_headers(req) if base is None else base, part, whole=whole),
        timeout=timeout,
        follow_redirects=True,
    ) as response:
        if response.status_code >= 400:
            response.read()  # the error mapping reads the body (X-Error-Code, message)
            hf_raise_for_status(response)
        if not whole and response.status_code == 200:
            raise RangeIgnored(url)
        yield response
