"""Lossless verification of drafted tokens, and the rules that choose the draft length.

Pure functions over arrays, shared by the cloud verifier, the tests and the simulations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
        return greedy_verdicts([proposal.tokens], [target_logits])[0]
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


def greedy_verdicts(
    drafts: Sequence[np.ndarray], target_logits: Sequence[np.ndarray]
) -> list[Verdict]:
    """Greedy ``verify`` of many rounds at once, by one argmax over all their rows.

    drafts[b]: [k_b] tokens of round b; target_logits[b]: [k_b+1, V], as in ``verify``.

    - Accepted tokens: the drafts before round b's first mismatch with the target's argmax.
    - Recovered token: the argmax at that first mismatch.
    - Bonus token: the argmax of row k_b, when all k_b drafts match (row k_b is set to mismatch,
      so every round has a first mismatch and the two cases are one).
    """
    if not drafts:
        return []
    for d, lg in zip(drafts, target_logits, strict=True):
        if lg.shape[0] != len(d) + 1:
            raise ValueError(f"target_logits has {lg.shape[0]} rows, need k+1 = {len(d) + 1}")
    top = np.concatenate(target_logits).argmax(-1)  # [N = sum(k_b+1)] the target's tokens
    drafted = np.concatenate([np.append(d, -1) for d in drafts])  # [N] -1 at every bonus row
    starts = np.cumsum([0] + [len(d) + 1 for d in drafts[:-1]])  # [B] first row of each round
    row = np.arange(len(top))  # [N]
    miss = np.where(drafted != top, row, len(top))  # [N] a row's index where it mismatches
    first = np.minimum.reduceat(miss, starts)  # [B] first mismatching row of each round
    return [Verdict(int(a), int(t)) for a, t in zip(first - starts, top[first], strict=True)]


def verify_batch(
    proposals: Sequence[Proposal],
    target_logits: Sequence[np.ndarray],
    params: Sequence[SamplingParams],
    rngs: Sequence[np.random.Generator],
) -> list[Verdict]:
    """``verify`` over the rounds of one forward pass, each round's verdict the same as alone.

    target_logits[b]: [k_b+1, V] of round b. Greedy rounds are decided together
    (``greedy_verdicts``); sampled rounds one by one, each drawing from its own generator, so a
    verdict never depends on which rounds shared the pass.
    """
    if not len(proposals) == len(target_logits) == len(params) == len(rngs):
        raise ValueError("verify_batch: one logits array, params and generator per proposal")
    verdicts: list[Verdict | None] = [None] * len(proposals)
    greedy = [b for b, p in enumerate(params) if p.greedy]
    if greedy:
        found = greedy_verdicts(
            [proposals[b].tokens for b in greedy], [target_logits[b] for b in greedy]
        )
        for b, v in zip(greedy, found, strict=True):
            verdicts[b] = v
    for b, p in enumerate(params):
        if not p.greedy:
            verdicts[b] = verify(proposals[b], target_logits[b], p, rngs[b])
    return [v for v in verdicts if v is not None]


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
