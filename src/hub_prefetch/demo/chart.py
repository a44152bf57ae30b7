"""The overview's figures as one PNG (matplotlib, from the ``bench`` extra; skipped when it is missing)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .overview import ScenarioResult
    from .runs import RunStats

__all__ = ["CHART_SKIPPED", "write_chart"]

#: What the demo prints instead of the chart's path when matplotlib is not installed.
CHART_SKIPPED = "chart skipped: pip install 'hub-prefetch[bench]' (matplotlib) to get it"

_COLORS = {"plain": "#c0504d", "hub-prefetch": "#4f81bd"}


def _time_until_all_loaded(stats: RunStats) -> float:
    """Seconds until every worker loaded; where one never did, when the last worker gave up."""
    return stats.last_done_s if stats.all_loaded_s is None else stats.all_loaded_s


def write_chart(results: list[ScenarioResult], path: Path, *, title: str) -> Path | None:
    """Draw failed workers, time until all loaded, bytes served / needed, Hub requests and temp files
    left, per scenario, plain beside hub-prefetch; return ``path``, or None without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415 - optional extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    names = [r.scenario.name for r in results]
    panels: tuple[tuple[str, Callable[[RunStats], float]], ...] = (
        ("failed workers", lambda s: float(s.failed + s.wrong_weights)),
        (
            "time until all loaded (s)",
            lambda s: s.all_loaded_s if s.all_loaded_s is not None else s.last_done_s,
        ),
        ("bytes served / needed", lambda s: s.bytes_served / s.bytes_needed if s.bytes_needed else 0.0),
        ("Hub requests", lambda s: float(s.hub_requests)),
        ("temp files left", lambda s: float(s.temp_files)),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2))
    width = 0.4
    for ax, (label, value) in zip(axes, panels, strict=True):
        top = 0.0
        for offset, side in ((-width / 2, "plain"), (width / 2, "hub-prefetch")):
            stats = [dict(r.sides)[side] for r in results]
            heights = [value(s) for s in stats]
            top = max(top, *heights)
            bars = ax.bar(
                [i + offset for i in range(len(names))], heights, width, label=side, color=_COLORS[side]
            )
            for bar, s in zip(bars, stats, strict=True):
                if label.startswith("time") and s.all_loaded_s is None:
                    bar.set_hatch("//")  # some worker never loaded: the bar is when the last one gave up
        ax.set_ylim(0, max(1.0, top) * 1.1)  # a panel of zeros still reads as zero
        ax.set_title(label, fontsize=10)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
