"""How many drafts a verify round keeps: from a pair's measured per-position survival, or alpha.

Survival at position i (``models.metrics.position_survival``) is the share of rounds whose i-th
draft was kept, i.e. P(accepted >= i). A round's accepted count is drawn by inverting that
curve with one uniform number, so one draw per ROUND whatever k is. Past the measured positions
the curve goes on geometrically with the pair's per-token acceptance (``theory_survival``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from models.metrics import clamp_acceptance, expected_tokens_per_round, theory_survival


class Acceptance:
    """Draws accepted counts for rounds of k drafts."""

    def __init__(self, alpha: float | None = None, survival: Sequence[float] = ()) -> None:
        if alpha is None and not survival:
            raise ValueError("acceptance: give alpha or a measured survival")
        self.alpha = clamp_acceptance(alpha) if alpha is not None else _per_token(survival)
        curve = list(theory_survival(self.alpha, 64)) if alpha is not None else []
        if alpha is None:
            running = 1.0
            for s in survival:  # survival never rises with the position: keep the running min
                running = min(running, clamp_acceptance(s))
                curve.append(running)
            last = curve[-1]
            curve += [last * self.alpha ** (i + 1) for i in range(64 - len(curve))]
        self.curve = curve  # P(accepted >= i + 1) for i = 0..63

    def draw(self, rng: random.Random, k: int) -> int:
        """Accepted drafts of one round of ``k`` drafts."""
        u = rng.random()
        n, curve = 0, self.curve
        while n < k and n < len(curve) and curve[n] > u:
            n += 1
        return n

    def mean_tokens(self, k: int) -> float:
        """Expected tokens a round of k adds (kept drafts + the verifier's token)."""
        return 1.0 + sum(self.curve[: min(k, len(self.curve))])

    def theory_tokens(self, k: int) -> float:
        """The closed form at the per-token acceptance (``expected_tokens_per_round``)."""
        return expected_tokens_per_round(self.alpha, k)


def _per_token(survival: Sequence[float]) -> float:
    """Per-token acceptance of a survival curve: kept drafts / positions reached, where the
    positions reached are P(reach i) = survival at i - 1 (1 at the first)."""
    kept = sum(survival)
    reached = 1.0 + sum(survival[:-1])
    return clamp_acceptance(kept / reached) if reached > 0 else 0.0
