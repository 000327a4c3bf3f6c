"""One definition of each metric and cost formula: the edge, the cloud and the coordinator agree."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cloud_node.costs import CostTracker
from coordinator import costmodel
from coordinator.costmodel import CloudView, EdgeView, predict
from edge_node.adaptive import AdaptiveK, RoundMeasure
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
