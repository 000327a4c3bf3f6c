"""Plots of a sweep: a figure against an axis, one line per series, one panel per facet; or
latency over time (``kind = "timeline"``). Every plot says it is simulated."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LABEL = "simulated (device and link profiles)"


def _key(v: Any) -> str:
    return " -> ".join(v) if isinstance(v, (list, tuple)) else str(v)


def _series(cell: Mapping[str, Any], series: list[str]) -> str:
    """A line's name: the mode as it is, other axes as ``axis=value``."""
    parts = [
        _key(cell.get(s, "")) if s == "mode" else f"{s}={_key(cell.get(s, ''))}" for s in series
    ]
    return ", ".join(parts)


def plot_sweep(report: Mapping[str, Any], out: Path) -> Path | None:
    """Draw the sweep's ``[plot]`` into ``out``.png; None when it has no plot section."""
    spec = report.get("plot") or {}
    if not spec:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = report["cells"]
    facet = spec.get("facet")
    facets = sorted({_key(c["cell"].get(facet, "")) for c in cells}) if facet else [""]
    cols = min(len(facets), 2)
    rows = math.ceil(len(facets) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.2 * rows), squeeze=False)
    for ax, fv in zip(axes.flat, facets, strict=False):
        mine = [c for c in cells if not facet or _key(c["cell"].get(facet, "")) == fv]
        if spec.get("kind") == "timeline":
            _timeline(ax, mine, spec)
        else:
            _lines(ax, mine, spec)
        ax.set_title(f"{facet}: {fv}" if facet else report["title"], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(facets) :]:
        ax.set_visible(False)
    fig.suptitle(f"{report['title']} - {LABEL}", fontsize=10)
    fig.tight_layout()
    path = out.with_suffix(".png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _lines(ax: Any, cells: list[Mapping[str, Any]], spec: Mapping[str, Any]) -> None:
    x, y = spec["x"], spec.get("y", "latency_p50_s")
    series = spec.get("series", [])
    lines: dict[str, list[tuple[float, float, float, float]]] = {}
    for c in cells:
        name = _series(c["cell"], series) or y
        f = c["figures"].get(y)
        if f is None:
            continue
        lines.setdefault(name, []).append((float(c["cell"][x]), f["median"], f["min"], f["max"]))
    for name, pts in sorted(lines.items()):
        pts.sort()
        xs = [p[0] for p in pts]
        ax.plot(xs, [p[1] for p in pts], marker="o", ms=3, label=name)
        ax.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts], alpha=0.15)
    if "slo_s" in spec:
        ax.axhline(float(spec["slo_s"]), color="k", ls="--", lw=0.8, label="SLO")
    if spec.get("logx"):
        ax.set_xscale("log")
    if spec.get("logy"):
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (median of seeds; band: min-max)")


def _timeline(ax: Any, cells: list[Mapping[str, Any]], spec: Mapping[str, Any]) -> None:
    series = spec.get("series", [])
    for c in cells:
        tl = c["runs"][0].get("timeline", [])
        name = _series(c["cell"], series) or c["label"]
        ax.plot([r[0] for r in tl], [r[3] for r in tl], label=name, lw=1.2)
    if "mark_s" in spec:
        ax.axvline(float(spec["mark_s"]), color="r", ls=":", lw=1, label="cloud lost")
    ax.set_xlabel("arrival time, s (first seed)")
    ax.set_ylabel("p95 latency of requests arriving then, s")
