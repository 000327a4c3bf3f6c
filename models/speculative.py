"""Lossless verification of drafted tokens, and the rules that choose the draft length.

Pure functions over arrays, shared by the cloud verifier, the tests and the simulations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from models.metrics import expected_tokens_per_round, round_ms, verify_ms
from models.sampling import SamplingParams, probs, sample


@dataclass(frozen=True)
class Proposal:
    """k drafted tokens and the draft distribution each was drawn from."""

    tokens: np.ndarray  # [k] int64
    q: np.ndarray | None  # [k, V] draft distributions; None for greedy drafts


@dataclass(frozen=True)
class Verdict:
    """How many drafts the target keeps and the token it adds after them."""

    accepted: int  # number of leading drafts kept, 0..k
    next_token: int  # recovered token at the first rejection, or the bonus token if all kept

    @property
    def emitted(self) -> int:
        """Tokens this round adds to the sequence (accepted drafts + one)."""
        return self.accepted + 1


def verify(
    proposal: Proposal,
    target_logits: np.ndarray,
    params: SamplingParams,
    rng: np.random.Generator,
) -> Verdict:
    """Decide which drafted tokens the target keeps, so the output follows the target exactly.

    target_logits: [k+1, V]; row i is the target's prediction for draft position i, row k the
    prediction after all k drafts.

    - Accepted tokens: greedy drafts are kept while they equal the target's argmax; sampled draft
      x_i is kept with probability min(1, p_i(x_i) / q_i(x_i)).
    - Recovered token: at the first rejection, a token drawn from normalize(max(0, p_i - q_i))
      (greedy: the target's argmax), and verification stops there.
    - Bonus token: when all k drafts are kept, one token drawn from p_k.
    """
    k = len(proposal.tokens)
    if target_logits.shape[0] != k + 1:
        raise ValueError(f"target_logits has {target_logits.shape[0]} rows, need k+1 = {k + 1}")
    if params.greedy:
        argmax = target_logits.argmax(-1)  # [k+1]
        mismatch = np.nonzero(proposal.tokens != argmax[:k])[0]
        n = int(mismatch[0]) if len(mismatch) else k
        return Verdict(n, int(argmax[n]))
    if proposal.q is None:
        raise ValueError("sampled verification needs the draft distributions q")
    p = probs(target_logits, params)  # [k+1, V]
    q = proposal.q  # [k, V]
    for i, x in enumerate(proposal.tokens.tolist()):
        px, qx = p[i, x], q[i, x]
        if qx > 0 and rng.random() < min(1.0, px / qx):
            continue
        residual = np.maximum(p[i] - q[i], 0.0)
        if residual.sum() <= 0:  # p == q up to rounding: any draw from p is exact
            residual = p[i]
        return Verdict(i, sample(residual / residual.sum(), rng))
    return Verdict(k, sample(p[k], rng))


def heuristic_next_k(k: int, accepted: int, k_max: int) -> int:
    """The transformers heuristic: k += 2 when every draft was kept, else k = max(1, k - 1)."""
    return min(k + 2, k_max) if accepted == k else max(1, k - 1)


@dataclass(frozen=True)
class CostModel:
    """Measured costs of one speculation round, in milliseconds."""

    rtt_ms: float  # network round trip between edge and cloud
    draft_ms: float  # drafter time per drafted token
    verify_base_ms: float  # cloud verify time for a round, fixed part
    verify_per_token_ms: float  # cloud verify time, per token fed (k drafts + the last committed)


def rtt_aware_k(acceptance: float, cost: CostModel, k_max: int) -> int:
    """The draft length that maximises expected tokens per second for the measured costs."""
    best_k, best_rate = 1, -math.inf
    for k in range(1, k_max + 1):
        verify = verify_ms(cost.verify_base_ms, cost.verify_per_token_ms, k)
        ms = round_ms(cost.rtt_ms, k, cost.draft_ms, verify)
        rate = expected_tokens_per_round(acceptance, k) / max(ms, 1e-9)
        if rate > best_rate:
            best_k, best_rate = k, rate
    return best_k
