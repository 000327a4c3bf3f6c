"""One definition of each metric and cost formula: the edge, the cloud and the coordinator agree."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cloud_node.costs import CostTracker
from coordinator import costmodel
from coordinator.costmodel import CloudView, EdgeView, predict
from edge_node.adaptive import AdaptiveK, RoundMeasure, pipelined_rtt_k
from models import metrics
from models.metrics import (
    PRIOR_ACCEPTANCE,
    VerifyCostFit,
    acceptance_from_mean_length,
    expected_tokens_per_round,
    per_token_acceptance,
)
from models.speculative import CostModel, rtt_aware_k
from node_runtime.kinds import Mode


@pytest.mark.parametrize("k", [1, 4, 8])
def test_expected_tokens_per_round_follows_the_closed_form_and_one_clamp(k: int) -> None:
    for a in (0.1, 0.5, 0.9, 0.99):
        assert expected_tokens_per_round(a, k) == pytest.approx(sum(a**i for i in range(k + 1)))
    assert expected_tokens_per_round(0.0, k) == 1.0
    assert expected_tokens_per_round(1.0, k) == k + 1
    # continuous up to 1, and every value outside [0, 1] is clamped the same way
    assert expected_tokens_per_round(1 - 1e-7, k) == pytest.approx(k + 1, rel=1e-5)
    assert expected_tokens_per_round(1.5, k) == k + 1
    assert expected_tokens_per_round(-0.2, k) == 1.0
    assert expected_tokens_per_round(math.nan, k) == 1.0


def test_the_inverse_recovers_the_acceptance() -> None:
    for a in (0.2, 0.6, 0.95):
        assert acceptance_from_mean_length(expected_tokens_per_round(a, 6), 6) == pytest.approx(
            a, abs=1e-9
        )


def test_every_side_uses_the_shared_formula_and_prior() -> None:
    assert not hasattr(costmodel, "expected_per_round")  # the coordinator's own copy is gone
    assert EdgeView("e").default_acceptance == PRIOR_ACCEPTANCE
    assert AdaptiveK().acceptance == PRIOR_ACCEPTANCE  # before any round was verified
    c = CloudView("c")
    assert (c.verify_base_ms, c.verify_per_token_ms) == CostTracker().verify_fit()


def test_per_token_acceptance_counts_positions_reached() -> None:
    # 3 rounds: 4 of 4 kept, 1 kept then a rejection, 0 kept (a rejection at once)
    assert per_token_acceptance(5, 3, 1) == pytest.approx(5 / 7)
    assert per_token_acceptance(0, 0, 0) is None
    ctl = AdaptiveK("fixed", k=4)
    for accepted in (4, 1, 0):
        ctl.update(RoundMeasure(4, accepted, 10.0, 1.0, 2.0))
    assert ctl.acceptance == pytest.approx(5 / 7)


def test_the_verify_fit_recovers_a_line_and_keeps_its_priors_before_data() -> None:
    fit = VerifyCostFit()
    assert fit.fit() == (metrics.PRIOR_VERIFY_BASE_MS, metrics.PRIOR_VERIFY_PER_TOKEN_MS)
    fit.observe(5, 7.0)
    assert fit.fit() == pytest.approx((7.0, 0.0))  # one x: no slope yet
    line = VerifyCostFit()
    for x in (2, 5, 9, 17):
        line.observe(x, 3.0 + 0.5 * x)
    assert line.fit() == pytest.approx((3.0, 0.5))
    recent = VerifyCostFit(forget=0.5)  # old passes fade: the fit follows a node that slowed
    for x in (2, 5, 9, 17) * 5:
        recent.observe(x, 3.0 + 0.5 * x)
    for x in (2, 5, 9, 17) * 5:
        recent.observe(x, 6.0 + 1.0 * x)
    assert recent.fit() == pytest.approx((6.0, 1.0), rel=1e-3)
    falling = VerifyCostFit()
    for x in (2, 9):
        falling.observe(x, 20.0 - x)
    assert falling.fit()[1] == 0.0  # a negative slope is noise: never predict cheaper rounds


def test_the_edge_and_the_cloud_fit_the_same_passes_the_same_way() -> None:
    rng = np.random.default_rng(0)
    ctl, cloud = AdaptiveK("rtt", k=4), CostTracker(forget=1.0)
    for k in (1, 3, 4, 8, 2, 6):
        ms = 2.0 + 0.3 * (k + 1) + rng.normal(0, 0.05)
        ctl.update(RoundMeasure(k, 0, 20.0, 0.5 * k, ms))
        cloud.observe_verify(k + 1, ms)
    c = ctl.cost()
    assert (c.verify_base_ms, c.verify_per_token_ms) == pytest.approx(cloud.verify_fit())


@pytest.mark.parametrize(("rtt", "a"), [(1.0, 0.6), (30.0, 0.8), (200.0, 0.95)])
def test_the_edge_and_the_coordinator_pick_the_same_k_from_the_same_figures(
    rtt: float, a: float
) -> None:
    """The edge maximizes tokens per ms of a round; the coordinator minimizes predicted latency,
    which is the same optimum when both use one round formula."""
    cloud = CloudView("c", verify_base_ms=3.0, verify_per_token_ms=0.4, model="t")
    edge = EdgeView("e", draft_ms_per_token=0.7, rtt_ms={"c": rtt}, acceptance={"t": a})
    by_latency = min(
        range(1, 17), key=lambda k: predict(edge, cloud, Mode.SPECULATION, k, 1000).latency_s
    )
    assert by_latency == rtt_aware_k(a, CostModel(rtt, 0.7, 3.0, 0.4), 16)


def test_the_pipelined_round_time_is_plain_at_no_hit_and_hides_the_draft_on_a_hit() -> None:
    rtt, k, d, v = 50.0, 4, 5.0, 10.0
    plain = metrics.round_ms(rtt, k, d, v, wait_ms=2.0)
    assert metrics.pipelined_round_ms(rtt, k, d, v, 0.0, wait_ms=2.0) == pytest.approx(plain)
    # a confirmed guess: the next round leaves with the verdict, its drafts made meanwhile
    assert metrics.pipelined_round_ms(rtt, k, d, v, 1.0, wait_ms=2.0) == pytest.approx(62.0)
    # a drafter slower than the round trip: the guess and k drafts set the pace
    assert metrics.pipelined_round_ms(5.0, k, 20.0, v, 1.0) == pytest.approx(100.0)
    half = metrics.pipelined_round_ms(rtt, k, d, v, 0.5, wait_ms=2.0)
    assert half == pytest.approx((plain + 62.0) / 2)
    assert metrics.pipelined_round_ms(rtt, k, d, v, 7.0) == metrics.pipelined_round_ms(
        rtt, k, d, v, 1.0
    )  # a probability is clamped like an acceptance
    assert metrics.pipeline_hit_probability(0.9, 3, 0.5) == pytest.approx(0.9**3 * 0.5)
    assert metrics.pipeline_hit_probability(math.nan, 3, 0.5) == 0.0


@pytest.mark.parametrize(("rtt", "draft", "a"), [(100.0, 40.0, 0.9), (200.0, 30.0, 0.95)])
def test_the_pipelined_rtt_rule_maximizes_the_overlap_aware_rate(
    rtt: float, draft: float, a: float
) -> None:
    """Slow drafter, slow link: drafting ahead hides the draft only when the guess holds,
    which short rounds make likelier; the rule follows the overlap-aware formula, not the
    plain one."""
    cost = CostModel(rtt, draft, 20.0, 1.0)

    def rate(k: int) -> float:
        verify = metrics.verify_ms(20.0, 1.0, k)
        hit = metrics.pipeline_hit_probability(a, k, a)
        ms = metrics.pipelined_round_ms(rtt, k, draft, verify, hit)
        return expected_tokens_per_round(a, k) / ms

    best = max(range(1, 17), key=rate)
    assert pipelined_rtt_k(a, a, cost, 16) == best
    assert best < rtt_aware_k(a, cost, 16)  # here the two rules disagree
    piped = AdaptiveK("rtt", k=4, pipelined=True)
    plain = AdaptiveK("rtt", k=4)
    for ctl in (piped, plain):
        for _ in range(30):
            ctl.update(RoundMeasure(4, 4, rtt + 24.0, 4 * draft, 24.0, True, True))
    assert piped.guess_right == 1.0 and plain.guess_right == 1.0
    assert piped.k == pipelined_rtt_k(piped.acceptance, 1.0, piped.cost(), 16)
    assert plain.k == rtt_aware_k(plain.acceptance, plain.cost(), 16)


def test_the_guess_rate_is_measured_and_the_k_to_draft_ahead_is_the_next_rounds() -> None:
    ctl = AdaptiveK("heuristic", k=4, k_max=5, pipelined=True)
    assert ctl.guess_right == ctl.acceptance  # before any guess: the per-token prior
    assert ctl.k_if_full() == 5  # +2, capped
    ctl.update(RoundMeasure(4, 4, 10.0, 1.0, 2.0, guessed=True, guess_right=False))
    ctl.update(RoundMeasure(5, 5, 10.0, 1.0, 2.0, guessed=True, guess_right=True))
    ctl.update(RoundMeasure(5, 2, 10.0, 1.0, 2.0))  # a rejection tests no guess
    assert (ctl.guesses, ctl.guesses_right, ctl.guess_right) == (2, 1, 0.5)
    assert ctl.k == 4 and ctl.k_if_full() == 5
    assert AdaptiveK("fixed", k=3).k_if_full() == 3


def test_the_cost_model_predicts_pipelined_speculation_with_the_overlap() -> None:
    cloud = CloudView("c", verify_base_ms=20.0, verify_per_token_ms=1.0, model="t")
    edge = EdgeView("e", draft_ms_per_token=10.0, rtt_ms={"c": 100.0}, acceptance={"t": 0.9})
    plain = predict(edge, cloud, Mode.SPECULATION, 4, 200)
    piped = predict(edge, cloud, Mode.SPECULATION, 4, 200, pipelined=True)
    assert piped.cloud_cpu_s == plain.cloud_cpu_s  # the cloud verifies the same rounds
    hit = metrics.pipeline_hit_probability(0.9, 4, 0.9)
    per_round = metrics.pipelined_round_ms(100.0, 4, 10.0, metrics.verify_ms(20, 1, 4), hit)
    plain_round = metrics.round_ms(100.0, 4, 10.0, metrics.verify_ms(20, 1, 4))
    rounds = 200 / expected_tokens_per_round(0.9, 4)
    # the first round overlaps nothing: it goes plain, the rest are drafted ahead
    expected = 100.0 + plain_round + (rounds - 1) * per_round
    assert piped.latency_s == pytest.approx(expected / 1e3)
    assert piped.latency_s < plain.latency_s
    never = EdgeView("e", draft_ms_per_token=10.0, rtt_ms={"c": 100.0}, acceptance={"t": 0.0})
    hopeless = predict(never, cloud, Mode.SPECULATION, 4, 200, pipelined=True)
    unpiped = predict(never, cloud, Mode.SPECULATION, 4, 200)
    assert hopeless.pipelined and not unpiped.pipelined
    assert (hopeless.latency_s, hopeless.cloud_cpu_s) == (unpiped.latency_s, unpiped.cloud_cpu_s)
    # a guess that never holds saves nothing
    r = costmodel.Request(200, pipelined=True)
    spec = [p for p in costmodel.candidates(edge, [cloud], r) if p.mode is Mode.SPECULATION]
    assert piped.latency_s in {p.latency_s for p in spec if p.k == 4}
