"""The scheduler's cost model: predictions follow the measured figures, plans follow objectives."""

from __future__ import annotations

import pytest

from coordinator.costmodel import (
    CloudView,
    EdgeView,
    Request,
    candidates,
    plan,
    predict,
)
from node_runtime.kinds import Mode, Objective, QualityFloor

EDGE_ONLY, CLOUD_ONLY, SPECULATION = Mode.EDGE_ONLY, Mode.CLOUD_ONLY, Mode.SPECULATION

CLOUD = CloudView(
    "c1", target_ms_per_token=2.0, verify_base_ms=2.0, verify_per_token_ms=0.2, model="target"
)


def edge(rtt: float, a: float = 0.9) -> EdgeView:
    return EdgeView("e1", draft_ms_per_token=0.2, rtt_ms={"c1": rtt}, acceptance={"target": a})


def test_low_rtt_favours_speculation_and_high_rtt_cloud_only() -> None:
    assert plan(edge(1.0), [CLOUD], Request(40)).mode == SPECULATION
    assert plan(edge(200.0), [CLOUD], Request(40)).mode == CLOUD_ONLY


def test_cloud_cost_objective_prefers_speculation_even_on_slow_links() -> None:
    p = plan(edge(200.0), [CLOUD], Request(40, objective=Objective.CLOUD_COST))
    assert p.mode == SPECULATION and p.k >= 4


def test_quality_floor_admits_edge_only_only_when_it_may() -> None:
    assert all(p.mode != EDGE_ONLY for p in candidates(edge(1.0), [CLOUD], Request(40)))
    p = plan(edge(500.0), [CLOUD], Request(40, quality_floor=QualityFloor.ANY))
    assert p.mode == EDGE_ONLY and p.cloud_cpu_s == 0.0


def test_a_busy_cloud_costs_more_and_the_plan_picks_the_faster_one() -> None:
    busy = CloudView("c2", busy_fraction=0.8, queue_depth=10, model="target")
    e = EdgeView("e1", rtt_ms={"c1": 20.0, "c2": 20.0}, acceptance={"target": 0.9})
    assert (
        predict(e, busy, CLOUD_ONLY, 0, 40).latency_s
        > predict(e, CLOUD, CLOUD_ONLY, 0, 40).latency_s
    )
    assert plan(e, [busy, CLOUD], Request(40)).cloud_id == "c1"
    assert plan(e, [busy, CLOUD], Request(40, exclude=["c1"])).cloud_id == "c2"


def test_a_busy_cloud_delays_a_call_by_the_rest_of_a_pass_not_a_fifo_queue() -> None:
    # iteration-level batching: a round joins the next pass with everything else waiting
    pass_ms = CLOUD.verify_pass_ms(3)
    assert CLOUD.wait_ms() == 0.0
    busy = CloudView(
        "c2", verify_base_ms=2.0, verify_per_token_ms=0.2, busy_fraction=0.9, model="target"
    )
    assert busy.wait_ms() == pytest.approx(0.45 * pass_ms)
    queued = CloudView(
        "c3", verify_base_ms=2.0, verify_per_token_ms=0.2, busy_fraction=0.9, queue_depth=33
    )
    assert queued.wait_ms() == pytest.approx((0.45 + 2) * pass_ms)  # two full batches of 16
    # so speculation keeps winning on a busy cloud at a low RTT, as it does when it is idle
    e = EdgeView("e1", draft_ms_per_token=0.2, rtt_ms={"c2": 1.0}, acceptance={"target": 0.9})
    assert plan(e, [busy], Request(40)).mode == SPECULATION


def test_acceptance_drives_the_best_draft_length() -> None:
    good = plan(edge(5.0, a=0.95), [CLOUD], Request(40, objective=Objective.CLOUD_COST))
    poor = plan(edge(5.0, a=0.3), [CLOUD], Request(40, objective=Objective.CLOUD_COST))
    assert good.k > poor.k


def test_bad_requests_are_rejected() -> None:
    with pytest.raises(ValueError, match="objective"):
        Request(10, objective="speed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="quality_floor"):
        Request(10, quality_floor="best")  # type: ignore[arg-type]
    assert plan(edge(1.0), [CLOUD], Request(10, exclude=["c1"])) is None


def slow_link_edge(a: float = 0.9) -> EdgeView:
    """A Pi-class drafter 100 ms away: drafting ahead has a round trip to hide behind."""
    return EdgeView("e1", draft_ms_per_token=10.0, rtt_ms={"c1": 100.0}, acceptance={"target": a})


def test_pipelined_speculation_is_a_candidate_only_where_the_request_allows_it() -> None:
    e, r = slow_link_edge(), Request(200, objective=Objective.CLOUD_COST)
    assert not any(p.pipelined for p in candidates(e, [CLOUD], r))
    both = candidates(
        e, [CLOUD], Request(200, objective=Objective.CLOUD_COST, allow_pipelined=True)
    )
    spec = [p for p in both if p.mode == SPECULATION]
    assert {p.pipelined for p in spec} == {True, False}
    assert all(not p.pipelined for p in both if p.mode != SPECULATION)
    best = both[0]  # same cloud compute, less latency: the plan drafts ahead
    assert best.mode == SPECULATION and best.pipelined
    plain = predict(e, CLOUD, SPECULATION, best.k, 200)
    assert best.cloud_cpu_s == plain.cloud_cpu_s and best.latency_s < plain.latency_s


def test_a_request_that_insists_on_pipelining_gets_only_pipelined_speculation() -> None:
    forced = Request(200, pipelined=True, allow_pipelined=False)
    spec = [p for p in candidates(slow_link_edge(), [CLOUD], forced) if p.mode == SPECULATION]
    assert spec and all(p.pipelined for p in spec)


def test_on_a_tie_the_plain_round_beats_drafting_ahead() -> None:
    # Acceptance 0: a round drafted ahead is never used, so both predict the same time; the
    # edge should not draft for nothing.
    r = Request(200, allow_pipelined=True, objective=Objective.CLOUD_COST)
    spec = [p for p in candidates(slow_link_edge(0.0), [CLOUD], r) if p.mode == SPECULATION]
    for k in r.k_choices:
        pair = [p for p in spec if p.k == k]
        assert [p.pipelined for p in pair] == [False, True]
        assert pair[0].latency_s == pair[1].latency_s


def test_the_first_round_of_pipelined_speculation_overlaps_nothing() -> None:
    # a drafter that guesses every bonus token right (acceptance 1): every round after the first
    # is drafted while its predecessor is in flight; the first is drafted after the session opens
    e = EdgeView("e1", draft_ms_per_token=5.0, rtt_ms={"c1": 50.0}, acceptance={"target": 1.0})
    k, n = 4, 50  # 5 tokens a round: 10 rounds
    plain = predict(e, CLOUD, SPECULATION, k, n).latency_s
    piped = predict(e, CLOUD, SPECULATION, k, n, pipelined=True).latency_s
    draft, in_flight = k * 5.0, 50.0 + CLOUD.verify_pass_ms(k)
    assert plain == pytest.approx((50.0 + 10 * (draft + in_flight)) / 1e3)
    assert piped == pytest.approx((50.0 + (draft + in_flight) + 9 * in_flight) / 1e3)
    # one round or less: nothing to overlap, pipelined costs what plain does
    assert predict(e, CLOUD, SPECULATION, k, 3, pipelined=True).latency_s == pytest.approx(
        predict(e, CLOUD, SPECULATION, k, 3).latency_s
    )
