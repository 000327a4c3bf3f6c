"""Calibration measures the trained pair's survival; validation's workload is seeded."""

from __future__ import annotations

import pytest

from models.task import WordTokenizer
from simulations.fleet.acceptance import Acceptance
from simulations.fleet.calibrate import survival
from tandem.sim_validate import SCENARIOS, arrivals, rel_errors


def test_survival_of_the_trained_pair(target, drafter) -> None:  # type: ignore[no-untyped-def]
    out = survival(drafter, target, WordTokenizer(), problems=3, k=4, max_new=24)
    curve = out["survival"]
    assert len(curve) == 4 and out["rounds"] > 0
    assert all(0.0 <= s <= 1.0 for s in curve)
    assert curve[0] > 0.5  # the trained drafter agrees with its target most of the time
    assert all(n > 0 for n in out["new_tokens"]) and len(out["prompt_tokens"]) == 3
    acc = Acceptance(survival=curve)  # a curve the simulator takes as it is
    assert 1.0 < acc.mean_tokens(4) <= 5.0


def test_validation_scenarios_cover_the_issue() -> None:
    assert len(SCENARIOS) >= 6
    sizes = {s.devices for s in SCENARIOS}
    assert min(sizes) == 1 and max(sizes) == 16
    assert {s.load for s in SCENARIOS} == {"idle", "loaded"}
    assert len({s.link for s in SCENARIOS}) >= 2 and len({s.mode for s in SCENARIOS}) >= 2


def test_workload_is_seeded_and_errors_are_relative() -> None:
    s = SCENARIOS[-1]
    assert arrivals(s, 0) == arrivals(s, 0) != arrivals(s, 1)
    live = [{"arrival": 0.0, "end": t, "edge_infeasible": 0} for t in (1.0, 2.0, 3.0)]
    sim = {"latency_p50_s": 2.2, "latency_p95_s": 2.9}
    err = rel_errors(live, sim)
    assert err["rel_error_p50"] == pytest.approx(0.1)
    assert err["rel_error_p95"] == pytest.approx(0.0, abs=1e-9)
