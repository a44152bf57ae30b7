"""Cells of the entry point x mode x cache matrix, run in one process per mode
(``python -m tests.support.matrix_cells CELLS.json``): the mode (online, offline, read-only) is the
process's environment and mount namespace; each cell has its own cache folder.

Prints one JSON line per cell: ``{"id", "ok", "value", "error_type", "typed", "error"}``.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SHARDED = "tiny/sharded-bert"
SUB = "text_encoder"
PIPE = "tiny/sd-pipe"


def _prefetch(cache: str) -> Any:
    import hub_prefetch

    return hub_prefetch.prefetch(SHARDED, [SUB], cache_dir=cache).commit


def _prefetch_subfolders(cache: str) -> Any:
    import hub_prefetch

    result = hub_prefetch.prefetch_subfolders(SHARDED, [SUB], cache_dir=cache)
    return None if result is None else result.commit


def _from_pretrained_with_prefetch(cache: str) -> Any:
    import transformers

    import hub_prefetch
    from hub_prefetch.testing.repos import tensor_fingerprint

    model = hub_prefetch.from_pretrained_with_prefetch(
        transformers.AutoModel.from_pretrained, SHARDED, subfolder=SUB, cache_dir=cache
    )
    return tensor_fingerprint(model)


def _install_pipeline(cache: str) -> Any:
    import diffusers

    import hub_prefetch
    from hub_prefetch.testing.targets import pipeline_fingerprints

    with hub_prefetch.protected_loads():
        pipe = diffusers.DiffusionPipeline.from_pretrained(PIPE, cache_dir=cache)
    return pipeline_fingerprints(pipe)


def _cli_warm(cache: str) -> Any:
    from hub_prefetch import cli

    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["warm", SHARDED, "-s", SUB, "--cache-dir", cache, "--json"], out=out, err=err)
    return {"exit_code": code, "stdout": out.getvalue()[-2000:], "stderr": err.getvalue()[-2000:]}


ENTRIES: dict[str, Callable[[str], Any]] = {
    "prefetch": _prefetch,
    "prefetch_subfolders": _prefetch_subfolders,
    "from_pretrained_with_prefetch": _from_pretrained_with_prefetch,
    "install_pipeline": _install_pipeline,
    "cli_warm": _cli_warm,
}


def main(path: str) -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    from hub_prefetch import errors

    with open(path, encoding="utf-8") as fh:
        spec = json.load(fh)
    for folder in spec.get("read_only") or ():
        # The mode's premise, checked where the cells run: no write succeeds, not even root's.
        probe = Path(folder) / "write-probe"
        try:
            probe.write_text("x")
        except OSError as exc:
            print(json.dumps({"id": "_read_only", "ok": True, "errno": exc.errno}), flush=True)
        else:
            probe.unlink()
            print(json.dumps({"id": "_read_only", "ok": False, "folder": folder}), flush=True)
            break
    for cell in spec["cells"]:
        record: dict[str, Any] = {"id": cell["id"], "ok": False}
        try:
            record["value"] = ENTRIES[cell["entry"]](cell["cache_dir"])
            record["ok"] = True
        except Exception as exc:
            record.update(
                error_type=type(exc).__name__,
                typed=isinstance(exc, errors.HubPrefetchError),
                oserror=isinstance(exc, OSError),
                error=str(exc)[:1500],
            )
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
