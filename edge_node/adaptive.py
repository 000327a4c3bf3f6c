"""Draft-length control on the edge: fixed, the transformers heuristic, or RTT-aware."""

from __future__ import annotations

from dataclasses import dataclass, field

from models.metrics import PRIOR_ACCEPTANCE, VerifyCostFit, per_token_acceptance
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
        if self.policy == KPolicy.HEURISTIC:
            # from the k in force: a draft that a stop token (or the room left) cut short says
            # nothing about longer drafts, so every kept draft counts as a full round
            full = m.accepted >= m.k
            self.k = heuristic_next_k(self.k, self.k if full else m.accepted, self.k_max)
        elif self.policy == KPolicy.RTT:
            self.k = rtt_aware_k(self.acceptance, self.cost(), self.k_max)
        return self.k
