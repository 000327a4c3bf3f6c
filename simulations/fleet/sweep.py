"""``tandem simulate sweep CONFIG.toml``: a grid of fleet runs, each cell repeated over seeds.

A sweep file holds ``[base]`` (FleetConfig fields, with ``[base.arrivals]``), ``[sweep]`` (axes:
a field name and its list of values; ``pair = [["edge", "cloud"], ...]`` sets both profiles) and
``[plot]`` (what to draw). The grid is the product of the axes; every cell runs ``repeats``
seeds, interleaved (repeat by repeat over the cells), and reports the median and range of each
figure. Runs go in-process, or on Ray (``--ray local`` or ``--ray ADDRESS``).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from simulations.fleet.config import FleetConfig, as_table, config_from
from simulations.fleet.fleet import simulate

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None  # type: ignore[assignment]

# Figures a cell reports (median and range over its repeats).
FIGURES = (
    "latency_p50_s",
    "latency_p95_s",
    "latency_p99_s",
    "ttft_p50_s",
    "ttft_p95_s",
    "cloud_utilization",
    "cloud_usd",
    "cloud_usd_busy",
    "cloud_usd_per_1k_tokens",
    "edge_j_per_token",
    "acceptance_rate",
    "tokens_per_s",
    "requests",
    "unfinished",
    "failovers",
    "degraded",
    "wall_s",
)
# More figures each run keeps in the JSON and CSV (the cell summaries use FIGURES).
RUN_EXTRAS = (
    "latency_mean_s",
    "tokens",
    "rounds",
    "rounds_per_verify_pass",
    "cloud_passes",
    "link_resets",
    "events",
    "sim_time_s",
)


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file."""

    name: str  # title, for tables and plots
    base: FleetConfig  # what every cell starts from
    axes: dict[str, list[Any]]  # field (or "pair") -> values, in grid order
    repeats: int = 3  # seeds per cell
    plot: dict[str, Any] = field(default_factory=dict)  # what to draw
    analysis: dict[str, Any] = field(default_factory=dict)  # crossover, capacity, ...

    def cells(self) -> list[dict[str, Any]]:
        """Every cell's axis values, in grid order."""
        names = list(self.axes)
        return [
            dict(zip(names, vals, strict=True)) for vals in itertools.product(*self.axes.values())
        ]


def load_sweep(path: str | Path) -> Sweep:
    """Parse a sweep file; unknown fields fail naming themselves."""
    if tomllib is None:
        raise RuntimeError("sweep files need Python >= 3.11 (tomllib)")
    data = tomllib.loads(Path(path).read_text())
    base = config_from(data.get("base", {}))
    axes = {k: list(v) for k, v in data.get("sweep", {}).items()}
    for name in axes:
        if name != "pair":
            config_from({name: axes[name][0]}, base)  # fails on an unknown field
    return Sweep(
        name=data.get("title", Path(path).stem),
        base=base,
        axes=axes,
        repeats=int(data.get("repeats", 3)),
        plot=dict(data.get("plot", {})),
        analysis=dict(data.get("analysis", {})),
    )


def cell_config(sweep: Sweep, cell: Mapping[str, Any], repeat: int) -> FleetConfig:
    """The config of one run: the base, the cell's values, the repeat's seed."""
    table = {k: v for k, v in cell.items() if k != "pair"}
    if "pair" in cell:
        table["edge_profile"], table["cloud_profile"] = cell["pair"]
    cfg = config_from(table, sweep.base)
    return replace(cfg, seed=sweep.base.seed + repeat)


def cell_label(cell: Mapping[str, Any]) -> str:
    """A cell's values as ``axis=value`` pairs."""
    return ", ".join(f"{k}={_text(v)}" for k, v in cell.items())


def _text(v: Any) -> str:
    return " -> ".join(v) if isinstance(v, (list, tuple)) else str(v)


def _run_table(table: dict[str, Any]) -> dict[str, Any]:
    """One run from a plain table (what Ray ships to a worker)."""
    return simulate(config_from(table))


Runner = Callable[[list[dict[str, Any]], Callable[[int], None]], list[dict[str, Any]]]


def in_process(tables: list[dict[str, Any]], step: Callable[[int], None]) -> list[dict[str, Any]]:
    """Run every table here, in order."""
    out = []
    for t in tables:
        out.append(_run_table(t))
        step(1)
    return out


def run_sweep(sweep: Sweep, runner: Runner | None = None, progress: bool = True) -> dict[str, Any]:
    """Every cell x repeat (interleaved: repeat by repeat), summarized per cell."""
    from tqdm import tqdm

    cells = sweep.cells()
    order = [(r, i) for r in range(sweep.repeats) for i in range(len(cells))]
    tables = [as_table(cell_config(sweep, cells[i], r)) for r, i in order]
    bar = tqdm(total=len(tables), desc=f"sweep {sweep.name}", unit="run", disable=not progress)
    results = (runner or in_process)(tables, bar.update)
    bar.close()
    runs: list[list[dict[str, Any]]] = [[] for _ in cells]
    keep_timeline = sweep.plot.get("kind") == "timeline" or sweep.analysis.get("kind") == "failover"
    for (r, i), res in zip(order, results, strict=True):
        kept = {k: res[k] for k in (*FIGURES, *RUN_EXTRAS) if k in res}
        if keep_timeline:
            kept["timeline"] = res["timeline"]
        runs[i].append({"repeat": r, **kept})
    out_cells = [
        {"cell": cell, "label": cell_label(cell), "figures": figures(rs), "runs": rs}
        for cell, rs in zip(cells, runs, strict=True)
    ]
    return {
        "title": sweep.name,
        "emulated": "simulated: device profiles and link profiles (no real hardware)",
        "base": as_table(sweep.base),
        "axes": sweep.axes,
        "repeats": sweep.repeats,
        "plot": sweep.plot,
        "cells": out_cells,
        "analysis": analyse(sweep, out_cells),
    }


def figures(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Median, min and max over repeats of every figure in ``FIGURES``."""
    out = {}
    for name in FIGURES:
        vals = [float(r[name]) for r in runs if not math.isnan(float(r[name]))]
        if vals:
            out[name] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    return out


def median_of(cell: Mapping[str, Any], name: str) -> float:
    """A cell's median of ``name``; NaN when it has none."""
    return float(cell["figures"].get(name, {}).get("median", math.nan))


def analyse(sweep: Sweep, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The sweep's analysis (``[analysis] kind``): crossover, capacity or none."""
    from simulations.fleet import analysis

    kind = sweep.analysis.get("kind", "")
    if not kind:
        return {}
    return analysis.KINDS[kind](sweep.analysis, cells)


def write_outputs(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """``out``.json, ``out``.csv (one row per run) and the plots; the paths written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = {"json": out.with_suffix(".json"), "csv": out.with_suffix(".csv")}
    # every run is in the CSV; the JSON keeps the cells' summaries (and runs with a timeline)
    slim = {
        **report,
        "cells": [
            {k: v for k, v in c.items() if k != "runs" or "timeline" in (v[0] if v else {})}
            for c in report["cells"]
        ],
    }
    paths["json"].write_text(json.dumps(slim, indent=1, default=float))
    with open(paths["csv"], "w", newline="") as f:
        w: Any = None
        for c in report["cells"]:
            for run in c["runs"]:
                row = {k: _text(v) for k, v in c["cell"].items()}
                row.update({k: v for k, v in run.items() if not isinstance(v, (dict, list))})
                if w is None:
                    w = csv.DictWriter(f, fieldnames=list(row))
                    w.writeheader()
                w.writerow(row)
    return paths


def print_table(report: dict[str, Any], names: Sequence[str] = ()) -> None:
    """One line per cell: the medians of the main figures."""
    names = names or (
        "latency_p50_s",
        "latency_p95_s",
        "ttft_p50_s",
        "cloud_utilization",
        "cloud_usd_per_1k_tokens",
        "edge_j_per_token",
    )
    print(f"{report['title']}  ({report['emulated']}; medians of {report['repeats']} seeds)")
    print("  ".join(f"{n:>12.12}" for n in names) + "  cell")
    for c in report["cells"]:
        vals = "  ".join(f"{median_of(c, n):>12.4g}" for n in names)
        print(f"{vals}  {c['label']}")
    if report["analysis"]:
        print("analysis:", json.dumps(report["analysis"], indent=1, default=float))
