"""The fleet simulator: costs from the shared tables, the coordinator's own code, acceptance,
modes, batching, failover and workloads."""

from __future__ import annotations

import ast
import math
import random
from dataclasses import replace
from pathlib import Path

import pytest

import coordinator.policy as policy
import node_runtime.profiles as profiles
from models.metrics import expected_tokens_per_round
from node_runtime.emulation import call_ms
from simulations.fleet import Arrivals, FleetConfig, SimMode, simulate
from simulations.fleet.acceptance import Acceptance
from simulations.fleet.config import ArrivalKind
from simulations.fleet.workload import read_trace, workload, write_trace

FLEET = Path(__file__).resolve().parents[1] / "simulations" / "fleet"
ONE = FleetConfig(
    devices=1,
    clouds=1,
    link="loopback",
    new_tokens=20,
    prompt_tokens=30,
    duration_s=40.0,
    arrivals=Arrivals(ArrivalKind.POISSON, rate_per_device=0.2),
)


def test_shared_code_is_imported_never_copied() -> None:
    defined, imported = set(), set()
    for path in FLEET.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported |= {f"{node.module}.{a.name}" for a in node.names}
    for name in ("cost_ms", "step_ms", "call_ms", "pick_cloud", "plan", "least_loaded", "Profile"):
        assert name not in defined, f"simulations.fleet defines its own {name}"
    for needed in (
        "node_runtime.emulation.call_ms",
        "node_runtime.profiles.get_profile",
        "coordinator.policy.pick_cloud",
        "coordinator.costmodel.plan",
        "coordinator.planner.profile_cloud",
    ):
        assert needed in imported, f"simulations.fleet does not import {needed}"


def test_cloud_only_latency_is_the_profiles_passes() -> None:
    cfg = replace(ONE, mode=SimMode.CLOUD_ONLY)
    out = simulate(cfg)
    p = profiles.get_profile(cfg.cloud_profile)
    passes = call_ms(p, [0], [cfg.prompt_tokens]) + sum(
        call_ms(p, [cfg.prompt_tokens + i], [1]) for i in range(cfg.new_tokens - 1)
    )
    assert out["requests"] >= 1
    assert out["latency_p50_s"] == pytest.approx(passes / 1e3, rel=1e-9)


def test_profile_table_is_read_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = replace(ONE, mode=SimMode.CLOUD_ONLY)
    before = simulate(cfg)["latency_p50_s"]
    p = profiles.PROFILES[cfg.cloud_profile]
    slow = replace(p, overhead_ms=profiles.Cited(p.overhead_ms.value + 10.0, "test"))
    monkeypatch.setitem(profiles.PROFILES, cfg.cloud_profile, slow)
    after = simulate(cfg)["latency_p50_s"]
    assert after == pytest.approx(before + cfg.new_tokens * 0.010, rel=1e-6)


def test_clouds_are_picked_by_the_coordinators_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    picked: list[str] = []

    def last_cloud(snapshot, edge_id, model, exclude):  # type: ignore[no-untyped-def]
        fits = policy.candidates(snapshot, model, exclude)
        choice = fits[-1].info if fits else None
        picked.append(choice.node_id if choice else "")
        return choice

    monkeypatch.setitem(policy.POLICIES, policy.DEFAULT_POLICY, last_cloud)
    out = simulate(replace(ONE, clouds=3, devices=4, mode=SimMode.CLOUD_ONLY))
    assert picked and set(picked) == {"cloud-2"}
    assert out["requests"] == len(picked)


@pytest.mark.parametrize("alpha,k", [(1.0, 4), (0.0, 4)])
def test_rounds_follow_acceptance(alpha: float, k: int) -> None:
    out = simulate(replace(ONE, alpha=alpha, k=k))
    per_request = out["rounds"] / out["requests"]
    assert per_request == math.ceil(ONE.new_tokens / (k + 1) if alpha else ONE.new_tokens)


def test_acceptance_draws_match_the_shared_formula() -> None:
    rng = random.Random(1)
    acc = Acceptance(alpha=0.7)
    draws = [acc.draw(rng, 5) for _ in range(40_000)]
    mean = 1 + sum(draws) / len(draws)
    assert mean == pytest.approx(expected_tokens_per_round(0.7, 5), rel=0.02)
    measured = Acceptance(survival=[0.99, 0.9, 0.5])
    draws = [measured.draw(rng, 3) for _ in range(40_000)]
    for i, s in enumerate([0.99, 0.9, 0.5], start=1):
        assert sum(d >= i for d in draws) / len(draws) == pytest.approx(s, abs=0.01)


def test_pipelining_hides_drafting_at_long_rtt() -> None:
    base = replace(
        ONE,
        link="satellite-geo",
        link_resets=False,
        alpha=0.95,
        k=4,
        duration_s=600,
        arrivals=Arrivals(rate_per_device=0.02),
    )  # no queueing
    plain = simulate(replace(base, mode=SimMode.SPECULATION))
    piped = simulate(replace(base, mode=SimMode.PIPELINED))
    assert piped["latency_mean_s"] < plain["latency_mean_s"]
    assert piped["edge_busy_s"] > plain["edge_busy_s"]  # drafts ahead, some wasted


def test_cloud_batches_rounds_of_many_devices() -> None:
    out = simulate(replace(ONE, devices=64, duration_s=20, arrivals=Arrivals(rate_per_device=0.2)))
    assert out["rounds_per_verify_pass"] > 1.5
    assert out["cloud_passes"] < out["rounds"]


def test_losing_a_cloud_fails_over_and_loses_no_request() -> None:
    cfg = replace(
        ONE,
        devices=40,
        clouds=2,
        duration_s=30,
        fail_cloud_at_s=10.0,
        arrivals=Arrivals(rate_per_device=0.2),
    )
    out = simulate(cfg)
    assert out["failovers"] > 0 and out["unfinished"] == 0 and out["degraded"] == 0
    alone = simulate(replace(cfg, clouds=1))
    assert alone["degraded"] > 0 and alone["unfinished"] == 0


def test_every_mode_runs_and_reports_cost_and_energy() -> None:
    for mode in SimMode:
        out = simulate(replace(ONE, mode=mode, duration_s=20))
        assert out["requests"] > 0 and out["tokens"] == out["requests"] * ONE.new_tokens
        assert out["cloud_usd"] > 0
        drafts = mode not in (SimMode.CLOUD_ONLY, SimMode.ADAPTIVE)
        assert (out["edge_j_per_token"] > 0) == drafts or mode is SimMode.ADAPTIVE


def test_adaptive_asks_the_planner() -> None:
    base = replace(
        ONE,
        edge_profile="orin-nano/tinyllama-1.1b-q4",
        cloud_profile="h100x2/llama3-70b-bf16",
        alpha=0.9,
        mode=SimMode.ADAPTIVE,
        link_resets=False,
    )
    near = simulate(replace(base, rtt_ms=1.0))
    far = simulate(replace(base, rtt_ms=2000.0))
    assert set(near["modes"]) <= {"speculation", "pipelined"}
    assert set(far["modes"]) == {"cloud-only"}


def test_same_seed_same_run_other_seed_other_run() -> None:
    cfg = replace(ONE, devices=8, link="wifi", duration_s=30)
    a, b = simulate(cfg), simulate(cfg)
    c = simulate(replace(cfg, seed=1))
    assert a["latency_p95_s"] == b["latency_p95_s"] and a["requests"] == b["requests"]
    assert a["latency_p95_s"] != c["latency_p95_s"]


def test_workloads(tmp_path: Path) -> None:
    cfg = replace(ONE, devices=100, duration_s=100.0, arrivals=Arrivals(rate_per_device=0.1))
    n = len(workload(cfg))
    assert abs(n - 1000) < 4 * math.sqrt(1000)
    bursty = replace(
        cfg,
        arrivals=Arrivals(ArrivalKind.MMPP, 0.1, burst_factor=5.0, mean_calm_s=10, mean_burst_s=10),
    )
    assert len(workload(bursty)) > 1.5 * n
    trace = tmp_path / "t.csv"
    arrivals = workload(cfg)[:50]
    write_trace(trace, arrivals)
    back = read_trace(trace, cfg.devices)
    assert [(a.device, a.new_tokens) for a in back] == [(a.device, a.new_tokens) for a in arrivals]
    replay = simulate(replace(cfg, arrivals=Arrivals(ArrivalKind.TRACE, trace=str(trace))))
    assert replay["requests"] == 50
