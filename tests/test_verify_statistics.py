"""Sampled speculation reproduces the target's distribution (many samples at fixed prefixes)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

from edge_node.drafter import Drafter
from models.sampling import SamplingParams, probs, restrict_support, sample
from models.speculative import Proposal, Verdict, verify
from models.task import WordTokenizer
from models.torch_backend import load_torch

ALPHA = 1e-3  # a correct sampler fails one run in a thousand


class BigramLM:
    """A fixed random table of next-token logits given the last token: cheap enough for 40k runs."""

    def __init__(self, vocab: int, seed: int, scale: float) -> None:
        self.table = np.random.default_rng(seed).normal(0, scale, (vocab, vocab))

    def logits(self, seq: list[int]) -> np.ndarray:
        return self.table[seq[-1]]


def speculate_two(
    target: BigramLM,
    drafter: BigramLM,
    params: SamplingParams,
    k: int,
    rng: np.random.Generator,
    verifier=verify,
    support: int | None = None,
) -> tuple[int, int]:
    """The first two tokens after [0] by speculation rounds (k drafts each); with ``support``,
    drafts come from the drafter's distribution on its ``support`` likeliest tokens only."""
    seq = [0]
    while len(seq) < 3:
        drafts, qs = [], []
        for _ in range(k):
            q = probs(drafter.logits(seq + drafts), params)
            q = q if support is None else restrict_support(q, support)
            drafts.append(sample(q, rng))
            qs.append(q)
        rows = np.stack([target.logits(seq + drafts[:i]) for i in range(k + 1)])
        v: Verdict = verifier(Proposal(np.array(drafts), np.stack(qs)), rows, params, rng)
        seq += [*drafts[: v.accepted], v.next_token]
    return seq[1], seq[2]


def joint_target(target: BigramLM, params: SamplingParams) -> np.ndarray:
    p1 = probs(target.logits([0]), params)
    return np.stack([p1[a] * probs(target.logits([0, a]), params) for a in range(len(p1))])


def chi2_pvalue(counts: np.ndarray, expected_p: np.ndarray) -> float:
    keep = expected_p > 0
    assert counts[~keep].sum() == 0, "a token the target never emits was emitted"
    n = counts.sum()
    return float(chisquare(counts[keep], expected_p[keep] * n).pvalue)


def run_joint(
    params: SamplingParams, k: int, n: int, verifier=verify, support: int | None = None
) -> float:
    target, drafter = BigramLM(6, 0, 1.5), BigramLM(6, 1, 1.5)
    rng = np.random.default_rng(123)
    counts = np.zeros((6, 6))
    for _ in range(n):
        a, b = speculate_two(target, drafter, params, k, rng, verifier, support)
        counts[a, b] += 1
    return chi2_pvalue(counts.ravel(), joint_target(target, params).ravel())


@pytest.mark.parametrize(
    ("params", "k"),
    [(SamplingParams(1.0), 1), (SamplingParams(1.0), 3), (SamplingParams(0.7, top_p=0.8), 2)],
)
def test_joint_of_two_tokens_matches_target(params: SamplingParams, k: int) -> None:
    assert run_joint(params, k, 20_000) > ALPHA


@pytest.mark.parametrize(
    ("params", "k", "support"),
    [(SamplingParams(1.0), 3, 2), (SamplingParams(1.0), 2, 1), (SamplingParams(0.7, 0.9), 2, 3)],
)
def test_drafts_from_a_small_support_still_give_the_targets_joint(
    params: SamplingParams, k: int, support: int
) -> None:
    """q is zero outside the drafter's top tokens (so it travels sparse, exactly); the output
    still follows the target, tokens outside every draft's support included."""
    assert run_joint(params, k, 20_000, support=support) > ALPHA


def test_the_check_has_power_against_a_biased_verifier() -> None:
    def accept_all(p: Proposal, logits: np.ndarray, params: SamplingParams, rng) -> Verdict:
        k = len(p.tokens)
        return Verdict(k, sample(probs(logits[k], params), rng))

    assert run_joint(SamplingParams(1.0), 2, 5_000, accept_all) < ALPHA


def first_token_pvalue(
    p: np.ndarray, q_drawn: np.ndarray, q_sent: np.ndarray, rng: np.random.Generator
) -> float:
    """Draft one token from ``q_drawn``, verify it against ``q_sent``; how well the emitted first
    token follows p."""
    counts = np.zeros(len(p))
    for _ in range(20_000):
        d = sample(q_drawn, rng)
        # the first emitted token depends on row 0 only; row 1 (the bonus) is any valid row
        v = verify(
            Proposal(np.array([d]), q_sent[None]),
            np.stack([np.log(p + 1e-30)] * 2),
            SamplingParams(1.0),
            rng,
        )
        counts[d if v.accepted else v.next_token] += 1
    return chi2_pvalue(counts, p)


def bundled_rows(temperature: float, support: int) -> list[tuple[np.ndarray, ...]]:
    """(p, full q, the edge drafter's q on ``support`` tokens) at prefixes of a task problem."""
    target, drafter = load_torch("target"), load_torch("drafter")
    params = SamplingParams(temperature)
    tok = WordTokenizer()
    prefix = [tok.bos_id, *tok.encode("Q 9 + 2 * 3 ? 9 + 2 = 11 ; 11 * 3")]
    edge = Drafter(drafter, params, max_support=support)
    out = []
    for cut in (4, 9, 14, 17):
        seq = prefix[:cut]
        p = probs(target.session().extend(seq)[-1], params)
        logits = drafter.session().extend(seq)[-1]
        out.append((p, probs(logits, params), edge.q(logits)))
    return out


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("support", [3, 256])
def test_first_token_matches_target_with_the_bundled_models(
    temperature: float, support: int
) -> None:
    """Fixed prefixes of a real task problem; drafts from the edge drafter's q (its top
    ``support`` tokens; 256 covers the whole task vocabulary)."""
    rng = np.random.default_rng(9)
    for p, _, q in bundled_rows(temperature, support):
        assert np.count_nonzero(q) <= support
        assert first_token_pvalue(p, q, q, rng) > ALPHA


def test_the_check_has_power_against_a_q_that_is_not_the_drawn_one() -> None:
    """Drafts drawn from 3 tokens but verified against the drafter's full q are biased, and the
    check sees it: the sparse q on the wire must be the one the draft was drawn from."""
    rng = np.random.default_rng(9)
    p, full, small = bundled_rows(2.0, 3)[2]  # the full q has 0.56 of its mass off the 3
    assert first_token_pvalue(p, small, full, rng) < ALPHA


def test_greedy_verify_keeps_the_matching_prefix() -> None:
    logits = np.full((4, 5), -5.0)
    for i, t in enumerate([2, 3, 1, 4]):
        logits[i, t] = 5.0
    v = verify(
        Proposal(np.array([2, 3, 0]), None), logits, SamplingParams(), np.random.default_rng()
    )
    assert v == Verdict(2, 1)
    v = verify(
        Proposal(np.array([2, 3, 1]), None), logits, SamplingParams(), np.random.default_rng()
    )
    assert v == Verdict(3, 4)
