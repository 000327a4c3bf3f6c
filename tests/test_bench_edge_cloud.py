"""``tandem bench edge-cloud``'s helpers: the grid, the crossover RTT, the per-cell and capacity
figures, the report's labels, and the load generator of the capacity phase (in process)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from cloud_node.node import CloudConfig, start_cloud
from models.loader import load_lm
from node_runtime.emulation import emulate
from node_runtime.profiles import get_profile
from simulations.link.profiles import get_profile as get_link
from tandem import edge_cloud_load
from tandem.edge_cloud_grid import (
    LINKS,
    POLICY_NAMES,
    EdgeCloudConfig,
    capacity_figures,
    cells,
    crossover,
    emulated_label,
    grid_figures,
    link_rtt_ms,
    link_spec,
    run_count,
)
from tandem.edge_cloud_report import build_report, plot, print_report

# ---------------------------------------------------------------- grid


def test_full_grid_spans_three_pairs_four_links_every_policy() -> None:
    cfg = EdgeCloudConfig()
    assert len(cfg.grid_pairs) >= 3 and cfg.repeats >= 3
    assert set(LINKS) >= {"wifi", "5g", "lte"} and max(map(link_rtt_ms, LINKS)) > 300
    assert POLICY_NAMES == ("cloud-only", "speculation", "pipelined", "adaptive")
    for pair in cfg.grid_pairs:  # every name is in the profile table, on the right side
        assert get_profile(pair.edge).role == "edge" and get_profile(pair.cloud).role == "cloud"
    grid = cells(cfg)
    # pair-major, so the nodes restart only when the pair changes; links by ascending RTT
    assert [p for p, _ in grid] == [p for p in cfg.grid_pairs for _ in cfg.links]
    rtts = [link_rtt_ms(link) for link in cfg.links]
    assert rtts == sorted(rtts)
    assert run_count(cfg) == (len(grid) * 4 + len(cfg.capacity_pairs)) * cfg.repeats
    assert cfg.capacity_pairs == cfg.grid_pairs[:2]


def test_quick_grid_is_smaller_but_keeps_every_policy_and_repeats() -> None:
    quick, full = EdgeCloudConfig(quick=True), EdgeCloudConfig()
    assert run_count(quick) < run_count(full) and quick.repeats >= 3
    assert quick.problems < full.problems and quick.sessions[-1] == full.sessions[-1] == 32
    assert any(link_rtt_ms(link) >= 20 for link in quick.links)  # pipelined_vs_plain has cells


def test_link_spec_drops_resets_and_keeps_delay_and_bandwidth() -> None:
    profile = get_link("lte").spec
    assert profile.uplink.resets_per_s > 0
    calm = link_spec("lte")
    assert calm.uplink.resets_per_s == calm.downlink.resets_per_s == 0
    assert calm.rtt_ms == profile.rtt_ms == pytest.approx(57.0)
    assert calm.uplink.bandwidth_mbit == profile.uplink.bandwidth_mbit


def test_labels_name_both_devices_and_the_link() -> None:
    pair = EdgeCloudConfig().grid_pairs[0]
    assert emulated_label(pair, "5g") == f"emulated: {pair.edge} -> {pair.cloud}, link 5g"
    assert emulated_label(pair) == f"emulated: {pair.edge} -> {pair.cloud}"


# ---------------------------------------------------------------- crossover


def test_crossover_interpolates_the_difference_between_the_cells_either_side() -> None:
    # (RTT, best speculation ms/token, cloud-only ms/token), unsorted on purpose
    c = crossover([(57.0, 30.0, 25.0), (18.0, 16.0, 20.0), (36.0, 24.0, 21.0), (630.0, 90, 45)])
    # between 18 ms (-4 ms) and 36 ms (+3 ms): the difference is 0 at 4/7 of the way
    assert c["rtt_ms"] == pytest.approx(18.0 + 18.0 * 4 / 7)
    assert c["bracket_ms"] == [18.0, 36.0] and c["side"] == "inside" and c["crossings"] == 1


def test_crossover_outside_the_grid_says_which_side() -> None:
    lose = crossover([(18.0, 24.0, 20.0), (57.0, 30.0, 20.0)])
    assert lose["rtt_ms"] is None and lose["side"] == "below" and "cloud-only wins" in lose["how"]
    win = crossover([(18.0, 10.0, 20.0), (57.0, 18.0, 20.0)])
    assert win["rtt_ms"] is None and win["side"] == "above" and "above 57 ms" in win["how"]


def test_crossover_with_noise_takes_the_first_and_says_so() -> None:
    c = crossover([(10.0, 9.0, 10.0), (20.0, 11.0, 10.0), (30.0, 9.5, 10.0), (40.0, 12.0, 10.0)])
    assert c["crossings"] == 3 and c["rtt_ms"] == pytest.approx(15.0)
    assert "first taken" in c["how"]
    with pytest.raises(ValueError):
        crossover([])


# ---------------------------------------------------------------- grid figures


def _run(ms: float, mode: str = "cloud-only") -> dict[str, Any]:
    return {"ms_per_token": ms, "modes": {mode: 1}}


def _cell(co: list[float], sp: list[float], pi: list[float], ad: list[float]) -> dict[str, Any]:
    return {
        "cloud-only": [_run(v) for v in co],
        "speculation": [_run(v, "speculation") for v in sp],
        "pipelined": [_run(v, "speculation") for v in pi],
        "adaptive": [_run(v) for v in ad],
    }


RTTS = {"wifi": 18.0, "5g": 36.0, "satellite-geo": 630.0}
RUNS = {
    "a -> b": {
        # speculation wins at 18 and 36 ms and loses at 630; adaptive misses the best at 36 ms
        "wifi": _cell([20, 20, 20], [16, 18, 14], [12, 14, 10], [12, 15, 10]),
        "5g": _cell([21, 21, 21], [30, 30, 33], [15, 24, 18], [21, 21, 30]),
        "satellite-geo": _cell([40, 40, 40], [200, 180, 190], [190, 171, 190], [40, 42, 41]),
    }
}


def test_grid_figures_pair_runs_per_repeat_and_pick_the_best_policy() -> None:
    g = grid_figures(RUNS, RTTS)
    wifi = g["best_vs_cloud_only"]["a -> b"]["wifi"]
    assert wifi["values"] == pytest.approx([0.6, 0.7, 0.5])  # pipelined / cloud-only, per repeat
    assert g["cells_won"] == 2 and g["cells"] == 3  # wifi and 5g (0.75 median)
    # adaptive / the best static policy of the same repeat
    five = g["adaptive_vs_best_static"]["a -> b"]["5g"]
    assert five["values"] == pytest.approx([21 / 15, 21 / 21, 30 / 18])
    assert g["adaptive_worst_cell"] == pytest.approx(1.4) and "5g" in g["adaptive_worst_cell_at"]
    # 5g: best / cloud-only 0.714, 1.143, 0.857 -> median 0.857, a win; geo ~4.5, a loss.
    # Medians: 5g best 18 vs 21 (-3 ms), geo 190 vs 40 (+150 ms)
    cross = g["crossover_rtt"]["a -> b"]
    assert cross["bracket_ms"] == [36.0, 630.0]
    assert cross["rtt_ms"] == pytest.approx(36.0 + 594.0 * 3 / 153)


def test_pipelined_vs_plain_is_the_median_over_far_cells_per_repeat() -> None:
    g = grid_figures(RUNS, RTTS)
    pvp = g["pipelined_vs_plain"]  # wifi (18 ms) is left out
    expect = [(15 / 30 + 190 / 200) / 2, (24 / 30 + 171 / 180) / 2, (18 / 33 + 190 / 190) / 2]
    assert pvp["values"] == pytest.approx(expect) and pvp["n"] == 3


def test_capacity_figures_are_paired_ratios_of_tokens_per_device_second() -> None:
    passes = {"cloud_passes": 100, "cloud_rounds": 250, "cloud_verify_passes": 100}
    spec = [
        {"tokens": 1000, "device_s": 2.0, "wall_s": 10.0, "drafted": 800, "accepted": 760},
        {"tokens": 1000, "device_s": 2.5, "wall_s": 11.0, "drafted": 800, "accepted": 720},
        {"tokens": 1000, "device_s": 2.0, "wall_s": 10.0, "drafted": 800, "accepted": 740},
    ]
    spec = [{**r, **passes} for r in spec]
    cloud = [
        {"tokens": 1000, "device_s": d, "wall_s": 5.0, "cloud_passes": 40} for d in (6.0, 5.0, 8.0)
    ]
    f = capacity_figures(spec, cloud)
    assert f["capacity_gain"]["values"] == pytest.approx([3.0, 2.0, 4.0])
    assert f["capacity_gain"]["median"] == pytest.approx(3.0)
    assert f["cloud_cost_per_token_ratio"]["values"] == pytest.approx([1 / 3, 0.5, 0.25])
    assert f["delivered_tokens_per_s"]["cloud-only"]["median"] == pytest.approx(200.0)
    assert f["acceptance_rate"]["median"] == pytest.approx(740 / 800)
    assert f["tokens_per_cloud_pass"]["speculation"]["median"] == pytest.approx(10.0)
    assert f["tokens_per_cloud_pass"]["cloud-only"]["median"] == pytest.approx(25.0)
    assert f["rounds_per_verify_pass"]["median"] == pytest.approx(2.5)


def test_report_labels_every_cell_and_plot_and_records_sources(tmp_path: Path, capsys) -> None:
    cfg = EdgeCloudConfig(quick=True, out_dir=tmp_path, pairs=EdgeCloudConfig().pairs[:1])
    pair = cfg.grid_pairs[0]
    runs = {pair.name: RUNS["a -> b"]}
    load = [
        {"mode": m, "sessions": n, "tokens": 900.0, "wall_s": 3.0, "device_s": d,
         "drafted": 700.0, "accepted": 660.0, "cloud_infeasible_calls": 0.0,
         "edge_infeasible_calls": 1.0, "edge_calls": 500.0, "repeat": r}
        for r in range(3) for n in cfg.sessions
        for m, d in (("speculation", 1.0), ("cloud-only", 3.0))
    ]  # fmt: skip
    zero = {"emulated_calls": 10.0, "emulated_infeasible_calls": 0.0}
    counters = {pair.name: {"edge": zero, "cloud": zero}}
    report = build_report(cfg, runs, RTTS, {pair.name: load}, counters, 1.0)
    json.dumps(report)  # the report is JSON as it stands
    assert report["server_capacity_gain_32"]["median"] == pytest.approx(3.0)
    assert report["met"]["server_capacity_gain_32"] is True
    assert report["capacity"]["label"] == emulated_label(pair, "5g")
    assert report["server_capacity_gain_32_by_pair"][pair.name]["median"] == pytest.approx(3.0)
    for link in RTTS:
        assert report["grid"][pair.name][link]["label"] == emulated_label(pair, link)
    assert set(report["profiles"]) == {pair.edge, pair.cloud}
    assert all(report["profiles"][n]["sources"] for n in report["profiles"])
    assert report["capacity"]["infeasible_calls"]["edges"] == 3 * 2 * len(cfg.sessions)
    print_report(report)
    out = capsys.readouterr().out
    assert emulated_label(pair) in out and "server_capacity_gain_32" in out
    plot(report, tmp_path)
    assert (tmp_path / "edge-cloud-latency.png").stat().st_size > 0
    assert (tmp_path / "edge-cloud-capacity.png").stat().st_size > 0


# ---------------------------------------------------------------- load generator


def test_load_generator_sessions_are_lossless_and_read_cloud_device_time() -> None:
    # speculation and cloud-only over the same prompts give the same greedy tokens; the cloud's
    # emulated device-seconds are read as a positive delta for each
    async def main() -> list[dict[str, Any]]:
        target, tok = load_lm("target")
        cloud = await start_cloud(
            emulate(target, "h100/llama3-8b-bf16"), tok.eos_id, CloudConfig(scorers=()), tok
        )
        inner, _ = load_lm("drafter-int8")
        args = argparse.Namespace(
            cloud=cloud.address, via=cloud.address, device="orin-nano-super/smollm2-135m-q4",
            requests=2, max_new=24,
        )  # fmt: skip
        try:
            return [
                await edge_cloud_load.one_config(mode, 3, args, inner, tok)
                for mode in edge_cloud_load.MODES
            ]
        finally:
            await cloud.stop(0)

    spec, co = asyncio.run(asyncio.wait_for(main(), 120))
    assert spec["tokens"] == co["tokens"] > 0 and spec["requests"] == co["requests"] == 6
    assert spec["device_s"] > 0 and co["device_s"] > 0
    assert spec["drafted"] >= spec["accepted"] > 0 and spec["degraded"] == 0
    assert spec["edge_calls"] > 0 and "edge_calls" in co
    assert spec["cloud_rounds"] >= spec["cloud_verify_passes"] > 0 and co["cloud_rounds"] == 0
    assert co["cloud_passes"] > 0 and co["cloud_infeasible_calls"] >= 0
