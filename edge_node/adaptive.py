"""Draft-length control on the edge: fixed, the transformers heuristic, or RTT-aware."""

from __future__ import annotations

from dataclasses import dataclass, field

from models.speculative import CostModel, heuristic_next_k, rtt_aware_k

K_POLICIES = ("fixed", "heuristic", "rtt")


def _ewma(old: float | None, new: float, alpha: float = 0.3) -> float:
    return new if old is None else (1 - alpha) * old + alpha * new


@dataclass
class RoundMeasure:
    """What one verify round showed."""

    k: int
    accepted: int
    round_ms: float  # edge-observed wall time from send to verdict
    draft_ms: float  # drafter time for the k drafts
    verify_ms: float  # cloud model time reported in the verdict


@dataclass
class AdaptiveK:
    """Chooses k for the next round from what the previous rounds measured."""

    policy: str = "heuristic"
    k: int = 4
    k_max: int = 16
    accepted_positions: int = 0
    rejections: int = 0
    rtt_ms: float | None = None
    draft_ms: float | None = None
    # least-squares fit of verify ms = base + slope * (k + 1)
    _fit: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0, 0.0])

    def __post_init__(self) -> None:
        if self.policy not in K_POLICIES:
            raise ValueError(f"k policy {self.policy!r} not in {K_POLICIES}")
        if not 1 <= self.k <= self.k_max:
            raise ValueError(f"draft length {self.k} outside [1, {self.k_max}]")

    @property
    def acceptance(self) -> float:
        """Per-token acceptance: accepted positions / positions reached (geometric MLE)."""
        reached = self.accepted_positions + self.rejections
        return self.accepted_positions / reached if reached else 0.8

    def cost(self) -> CostModel:
        """The measured round costs; defaults until a round has been seen."""
        n, sx, sy, sxx, sxy = self._fit
        slope = (n * sxy - sx * sy) / (n * sxx - sx * sx) if n > 1 and n * sxx != sx * sx else 0.0
        slope = max(slope, 0.0)
        base = (sy - slope * sx) / n if n else 1.0
        return CostModel(self.rtt_ms or 1.0, self.draft_ms or 0.5, max(base, 0.0), slope)

    def update(self, m: RoundMeasure) -> int:
        """Record a round and return the next k."""
        self.accepted_positions += m.accepted
        self.rejections += int(m.accepted < m.k)
        self.rtt_ms = _ewma(self.rtt_ms, max(m.round_ms - m.verify_ms, 0.0))
        self.draft_ms = _ewma(self.draft_ms, m.draft_ms / max(m.k, 1))
        x = float(m.k + 1)
        for i, v in enumerate((1.0, x, m.verify_ms, x * x, x * m.verify_ms)):
            self._fit[i] += v
        if self.policy == "heuristic":
            self.k = heuristic_next_k(m.k, m.accepted, self.k_max)
        elif self.policy == "rtt":
            self.k = rtt_aware_k(self.acceptance, self.cost(), self.k_max)
        return self.k
