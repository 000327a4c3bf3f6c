"""Sweeps: the shipped configs parse, a small grid writes CSV, JSON and a plot, and the
analyses find crossovers and capacities."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from simulations.fleet.analysis import capacity, zero_crossing
from simulations.fleet.plots import plot_sweep
from simulations.fleet.sweep import load_sweep, run_sweep, write_outputs

CONFIGS = Path(__file__).resolve().parents[1] / "simulations" / "configs"
SMALL = """
title = "small"
repeats = 3
[base]
devices = 1
clouds = 1
link = "wifi"
link_resets = false
alpha = 0.9
new_tokens = 48
duration_s = 300.0
[base.arrivals]
rate_per_device = 0.05
[sweep]
pair = [["orin-nano/tinyllama-1.1b-q4", "h100x2/llama3-70b-bf16"]]
rtt_ms = [0, 100, 400, 1600]
mode = ["cloud-only", "speculation"]
[analysis]
kind = "crossover"
group = "pair"
x = "rtt_ms"
contenders = ["speculation"]
[plot]
x = "rtt_ms"
y = "latency_p50_s"
series = ["mode"]
facet = "pair"
"""


def test_shipped_configs_parse() -> None:
    names = sorted(p.stem for p in CONFIGS.glob("*.toml"))
    assert names == ["capacity", "crossover", "failover", "slow-drafter"]
    for path in CONFIGS.glob("*.toml"):
        sweep = load_sweep(path)
        assert sweep.repeats >= 3 and len(sweep.cells()) >= 4 and sweep.plot


def test_unknown_field_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[base]\ndevicez = 3\n")
    with pytest.raises(ValueError, match="devicez"):
        load_sweep(bad)


def test_small_sweep_writes_outputs_and_finds_the_crossover(tmp_path: Path) -> None:
    cfg = tmp_path / "small.toml"
    cfg.write_text(SMALL)
    report = run_sweep(load_sweep(cfg), progress=False)
    paths = write_outputs(report, tmp_path / "out")
    png = plot_sweep(report, tmp_path / "out")
    assert png is not None and png.stat().st_size > 10_000
    rows = list(csv.DictReader(open(paths["csv"])))
    assert len(rows) == 4 * 2 * 3  # cells x repeats
    assert {r["mode"] for r in rows} == {"cloud-only", "speculation"}
    data = json.loads(paths["json"].read_text())
    assert "simulated" in data["emulated"]
    (group,) = data["analysis"]["groups"].values()
    # speculation wins near, cloud-only far: the crossover lies inside the swept RTTs
    assert group["side"] == "inside" and 0 < group["x"] < 1600
    for cell in data["cells"]:
        fig = cell["figures"]["latency_p50_s"]
        assert fig["min"] <= fig["median"] <= fig["max"]


def test_zero_crossing_interpolates() -> None:
    assert zero_crossing([(0, -1.0), (10, 1.0)])["x"] == pytest.approx(5.0)
    assert zero_crossing([(0, -1.0), (10, -0.5)])["x"] is None


def test_capacity_needs_every_smaller_fleet_within_the_slo() -> None:
    def cell(mode: str, n: int, p95: float, unfinished: int = 0) -> dict:
        figs = {"latency_p95_s": {"median": p95}, "unfinished": {"median": unfinished}}
        return {"cell": {"mode": mode, "devices": n}, "figures": figs}

    cells = [
        cell("a", 10, 1.0),
        cell("a", 20, 2.5),
        cell("a", 40, 1.0),
        cell("b", 10, 1.0),
        cell("b", 20, 1.0),
        cell("b", 40, 1.0, unfinished=3),
    ]
    out = capacity({"slo_s": 2.0, "x": "devices", "group": "mode"}, cells)
    assert out["groups"]["a"] == {"max_within_slo": 10.0, "first_miss": 20.0}
    assert out["groups"]["b"] == {"max_within_slo": 20.0, "first_miss": 40.0}
