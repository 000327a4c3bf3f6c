"""Draft-length control on the edge: fixed, the transformers heuristic, or RTT-aware.

When the edge drafts ahead (pipelined speculation), the RTT-aware rule scores each k with the
overlap-aware round time: a longer draft costs less when it is drafted during the round trip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from models.metrics import (
    PRIOR_ACCEPTANCE,
    VerifyCostFit,
    expected_tokens_per_round,
    per_token_acceptance,
    pipeline_hit_probability,
    pipelined_round_ms,
    verify_ms,
)
from models.speculative import CostModel, heuristic_next_k, rtt_aware_k
from node_runtime.kinds import KPolicy


def _ewma(old: float | None, new: float, alpha: float = 0.3) -> float:
    return new if old is None else (1 - alpha) * old + alpha * new


@dataclass
class RoundMeasure:
    """What one verify round showed."""

    k: int  # drafts sent (fewer than asked when a stop token ended the draft)
    accepted: int  # drafts the verdict kept
    round_ms: float  # edge-observed wall time from send to verdict
    draft_ms: float  # drafter time for the k drafts
    verify_ms: float  # cloud model time reported in the verdict
    guessed: bool = False  # a guess of the bonus token was made and every draft was kept
    guess_right: bool = False  # ... and the verifier's bonus token equalled the guess


@dataclass
class AdaptiveK:
    """Chooses k for the next round from what the previous rounds measured."""

    policy: KPolicy | str = KPolicy.HEURISTIC  # a KPolicy (its name is accepted too)
    k: int = 4  # draft length of the next round
    k_max: int = 16  # never draft more than this
    accepted_positions: int = 0  # drafts kept over all rounds
    rounds: int = 0  # verify rounds seen
    full_rounds: int = 0  # rounds that kept every draft
    rtt_ms: float | None = None  # network part of a round, smoothed
    draft_ms: float | None = None  # drafter ms per drafted token, smoothed
    pipelined: bool = False  # the next round is drafted while this one is in flight
    guesses: int = 0  # full rounds whose bonus token the drafter had guessed
    guesses_right: int = 0  # of those, the rounds whose bonus equalled the guess
    # verify ms = base + slope x tokens fed, fitted over every round seen
    _fit: VerifyCostFit = field(default_factory=VerifyCostFit)

    def __post_init__(self) -> None:
        self.policy = KPolicy.parse(self.policy)
        if not 1 <= self.k <= self.k_max:
            raise ValueError(f"draft length {self.k} outside [1, {self.k_max}]")

    @property
    def acceptance(self) -> float:
        """Per-token acceptance measured so far; the shared prior before any round."""
        a = per_token_acceptance(self.accepted_positions, self.rounds, self.full_rounds)
        return PRIOR_ACCEPTANCE if a is None else a

    @property
    def guess_right(self) -> float:
        """P(the drafter's guess equals the bonus token) measured so far; before any guess the
        per-token acceptance (the bonus is drawn like one more draft position would be)."""
        return self.guesses_right / self.guesses if self.guesses else self.acceptance

    def k_if_full(self) -> int:
        """The k ``update`` would choose after a round that keeps every draft of the k in force
        (the length to draft ahead); the RTT rule's figures barely move in one round."""
        if self.policy == KPolicy.HEURISTIC:
            return heuristic_next_k(self.k, self.k, self.k_max)
        return self.k

    def cost(self) -> CostModel:
        """The measured round costs; defaults until a round has been seen."""
        base, slope = self._fit.fit()
        return CostModel(self.rtt_ms or 1.0, self.draft_ms or 0.5, base, slope)

    def update(self, m: RoundMeasure) -> int:
        """Record a round and return the next k."""
        self.accepted_positions += m.accepted
        self.rounds += 1
        self.full_rounds += int(m.accepted >= m.k)
        self.rtt_ms = _ewma(self.rtt_ms, max(m.round_ms - m.verify_ms, 0.0))
        self.draft_ms = _ewma(self.draft_ms, m.draft_ms / max(m.k, 1))
        self._fit.observe(m.k + 1, m.verify_ms)
        self.guesses += int(m.guessed)
        self.guesses_right += int(m.guessed and m.guess_right)
        if self.policy == KPolicy.HEURISTIC:
            # from the k in force: a draft that a stop token (or the room left) cut short says
            # nothing about longer drafts, so every kept draft counts as a full round
            full = m.accepted >= m.k
            self.k = heuristic_next_k(self.k, self.k if full else m.accepted, self.k_max)
        elif self.policy == KPolicy.RTT and self.pipelined:
            self.k = pipelined_rtt_k(self.acceptance, self.guess_right, self.cost(), self.k_max)
        elif self.policy == KPolicy.RTT:
            self.k = rtt_aware_k(self.acceptance, self.cost(), self.k_max)
        return self.k


def pipelined_rtt_k(acceptance: float, guess_right: float, cost: CostModel, k_max: int) -> int:
    """The draft length that maximises expected tokens per second when the edge drafts ahead:
    ``rtt_aware_k`` with the overlap-aware round time of ``models.metrics``."""
    best_k, best_rate = 1, -math.inf
    for k in range(1, k_max + 1):
        verify = verify_ms(cost.verify_base_ms, cost.verify_per_token_ms, k)
        hit = pipeline_hit_probability(acceptance, k, guess_right)
        ms = pipelined_round_ms(cost.rtt_ms, k, cost.draft_ms, verify, hit)
        rate = expected_tokens_per_round(acceptance, k) / max(ms, 1e-9)
        if rate > best_rate:
            best_k, best_rate = k, rate
    return best_k
