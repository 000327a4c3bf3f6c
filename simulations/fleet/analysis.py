"""What a sweep concludes from its cells: a crossover, a capacity within an SLO, a ratio's sign.

Each kind is a function ``(settings, cells) -> dict`` over the cells' medians, named by
``[analysis] kind`` in the sweep file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Cells = Sequence[Mapping[str, Any]]


def _key(v: Any) -> str:
    return " -> ".join(v) if isinstance(v, (list, tuple)) else str(v)


def _med(cell: Mapping[str, Any], name: str) -> float:
    return float(cell["figures"].get(name, {}).get("median", math.nan))


def _group_key(cell: Mapping[str, Any], group: str | Sequence[str]) -> str:
    """The cell's value of the group axis, or of each group axis joined by " | "."""
    names = [group] if isinstance(group, str) else list(group)
    return " | ".join(_key(cell.get(n, "all")) for n in names)


def _grouped(
    cells: Cells, group: str | Sequence[str], x: str, mode_axis: str
) -> dict[str, dict[float, dict]]:
    """cells by group value, then x, then mode: {group: {x: {mode: cell}}}."""
    out: dict[str, dict[float, dict]] = {}
    for c in cells:
        v = c["cell"]
        g = _group_key(v, group)
        out.setdefault(g, {}).setdefault(float(v[x]), {})[str(v.get(mode_axis, ""))] = c
    return out


def zero_crossing(points: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """Where ``y`` (sorted by x) first changes sign, linear between the two points around it."""
    pts = sorted(p for p in points if not math.isnan(p[1]))
    for (x1, y1), (x2, y2) in zip(pts, pts[1:], strict=False):
        if (y1 < 0) != (y2 < 0):
            return {"x": x1 + (x2 - x1) * y1 / (y1 - y2), "bracket": [x1, x2], "side": "inside"}
    if not pts:
        return {"x": None, "bracket": None, "side": "no data"}
    sign = "negative" if pts[0][1] < 0 else "positive"
    return {"x": None, "bracket": None, "side": f"{sign} over {pts[0][0]:g}-{pts[-1][0]:g}"}


def crossover(s: Mapping[str, Any], cells: Cells) -> dict[str, Any]:
    """Per group: the x past which the best contender stops beating the baseline.

    y = best contender's metric - baseline's metric; speculation wins where y < 0.
    """
    metric, mode = s.get("metric", "latency_p50_s"), s.get("mode_axis", "mode")
    base, contenders = s.get("baseline", "cloud-only"), s.get("contenders", ["speculation"])
    out = {}
    for g, by_x in _grouped(cells, s.get("group", "pair"), s.get("x", "rtt_ms"), mode).items():
        pts = []
        for x, by_mode in by_x.items():
            best = min(_med(by_mode[m], metric) for m in contenders if m in by_mode)
            pts.append((x, best - _med(by_mode[base], metric)))
        out[g] = zero_crossing(pts)
        out[g]["x_name"] = s.get("x", "rtt_ms")
        if out[g]["x"] is None and pts:
            won = sorted(pts)[0][1] < 0
            out[g]["how"] = (
                "speculation wins over the whole range: crossover beyond it"
                if won
                else "the baseline wins over the whole range: crossover below it, if any"
            )
    return {"kind": "crossover", "metric": metric, "groups": out}


def ratio(s: Mapping[str, Any], cells: Cells) -> dict[str, Any]:
    """Per group and x: contender / baseline of the metric, and where it crosses 1."""
    metric, mode = s.get("metric", "latency_p50_s"), s.get("mode_axis", "mode")
    base, cont = s.get("baseline", "cloud-only"), s.get("contender", "speculation")
    out = {}
    for g, by_x in _grouped(
        cells, s.get("group", "edge_profile"), s.get("x", "alpha"), mode
    ).items():
        ratios = {
            x: _med(by_mode[cont], metric) / _med(by_mode[base], metric)
            for x, by_mode in sorted(by_x.items())
            if cont in by_mode and base in by_mode
        }
        cross = zero_crossing([(x, r - 1.0) for x, r in ratios.items()])
        slower = [x for x, r in ratios.items() if r > 1.0]
        out[g] = {"ratios": ratios, "crosses_1_at": cross, "slower_at": slower}
    return {"kind": "ratio", "metric": metric, "contender": cont, "baseline": base, "groups": out}


def capacity(s: Mapping[str, Any], cells: Cells) -> dict[str, Any]:
    """Per group: the most devices (x) whose metric meets the SLO with every request finished,
    every smaller x meeting it too; and the first x that misses."""
    metric, slo, x = s.get("metric", "latency_p95_s"), float(s["slo_s"]), s.get("x", "devices")
    out = {}
    groups: dict[str, list[tuple[float, Mapping[str, Any]]]] = {}
    for c in cells:
        groups.setdefault(_group_key(c["cell"], s.get("group", "mode")), []).append(
            (float(c["cell"][x]), c)
        )
    for g, pts in groups.items():
        best, first_miss = None, None
        for xv, c in sorted(pts, key=lambda p: p[0]):
            ok = _med(c, metric) <= slo and _med(c, "unfinished") == 0
            if ok and first_miss is None:
                best = xv
            elif not ok and first_miss is None:
                first_miss = xv
        out[g] = {"max_within_slo": best, "first_miss": first_miss}
    names = list(out)
    gain = None
    if len(names) == 2 and all(out[n]["max_within_slo"] for n in names):
        gain = out[names[1]]["max_within_slo"] / out[names[0]]["max_within_slo"]
    return {
        "kind": "capacity",
        "metric": metric,
        "slo_s": slo,
        "groups": out,
        f"gain_{names[-1]}_vs_{names[0]}" if names else "gain": gain,
    }


def failover(s: Mapping[str, Any], cells: Cells) -> dict[str, Any]:
    """Per cell: failovers, degraded requests and the p95 before and after the loss."""
    at = float(s.get("at_s", 0.0))
    out = {}
    for c in cells:
        tl = c["runs"][0].get("timeline", [])
        before = [row[3] for row in tl if row[0] < at and not math.isnan(row[3])]
        after = [row[3] for row in tl if row[0] >= at and not math.isnan(row[3])]
        out[c["label"]] = {
            "failovers": _med(c, "failovers"),
            "degraded": _med(c, "degraded"),
            "p95_before_s": max(before) if before else None,
            "p95_worst_after_s": max(after) if after else None,
        }
    return {"kind": "failover", "lost_at_s": at, "cells": out}


KINDS: dict[str, Callable[[Mapping[str, Any], Cells], dict[str, Any]]] = {
    "crossover": crossover,
    "ratio": ratio,
    "capacity": capacity,
    "failover": failover,
}
