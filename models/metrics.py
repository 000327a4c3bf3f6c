"""One definition of each speculation metric and cost formula, imported wherever it is used.

Pure: the standard library only, so the edge (no torch), the cloud, the coordinator and the
simulations all import the same formulas.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

# Per-token acceptance assumed for a (drafter, target) pair before any of its rounds was verified.
# Optimistic on purpose: a plan only measures acceptance by running speculation, so a pessimistic
# prior (the coordinator once used 0.7) would steer unmeasured pairs to cloud-only and keep them
# unmeasured. 0.8 sits between published pairs (about 0.6-0.8) and the bundled pair (0.95).
PRIOR_ACCEPTANCE = 0.8

# Verify pass cost assumed before a node has measured its own (ms, and ms per token fed).
PRIOR_VERIFY_BASE_MS = 2.0
PRIOR_VERIFY_PER_TOKEN_MS = 0.2

# Acceptance this close to 1 counts as 1: the closed form divides by (1 - a).
_ONE = 1e-9


def clamp_acceptance(a: float) -> float:
    """The one clamping rule: per-token acceptance lies in [0, 1]; NaN counts as 0."""
    return 0.0 if math.isnan(a) else min(max(a, 0.0), 1.0)


def expected_tokens_per_round(acceptance: float, k: int) -> float:
    """E[tokens per round] = (1 - a^(k+1)) / (1 - a) for per-token acceptance a and k drafts.

    Counts the token the verifier adds (recovered or bonus), so it lies in [1, k + 1]; at a = 1
    it is the limit k + 1.
    """
    a = clamp_acceptance(acceptance)
    if a >= 1.0 - _ONE:
        return float(k + 1)
    return (1.0 - a ** (k + 1)) / (1.0 - a)


def acceptance_from_mean_length(mean_length: float, k: int) -> float:
    """Invert the theory: the per-token acceptance that gives ``mean_length`` at draft length k."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if expected_tokens_per_round(mid, k) < mean_length:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def per_token_acceptance(accepted: int, rounds: int, full_rounds: int) -> float | None:
    """Kept drafts / draft positions reached (the geometric MLE of a); None before any.

    A round stops at its first rejection, so the positions reached are the kept ones plus one
    per round that rejected something (``rounds - full_rounds``).
    """
    reached = accepted + rounds - full_rounds
    return accepted / reached if reached > 0 else None


def position_survival(rounds: Iterable[tuple[int, int]], k: int) -> list[float | None]:
    """Per-position survival (vLLM's per-position acceptance) at positions i = 1..k.

    ``rounds`` holds (draft positions, accepted) per verify round. Survival at i is the share
    of the rounds that drafted at least i tokens whose i-th draft was accepted; None where no
    round drafted that far. When every round drafted k, the denominator is the round count.
    """
    reached, kept = [0] * k, [0] * k
    for positions, accepted in rounds:
        for i in range(min(positions, k)):
            reached[i] += 1
            kept[i] += int(accepted > i)
    return [kept[i] / reached[i] if reached[i] else None for i in range(k)]


def theory_survival(acceptance: float, k: int) -> list[float]:
    """Survival at positions 1..k when each draft survives independently with ``acceptance``:
    a^i (the model behind ``expected_tokens_per_round``, whose sum over i is 1 + a + ... )."""
    a = clamp_acceptance(acceptance)
    return [a**i for i in range(1, k + 1)]


def acceptance_rate(accepted: int, drafted: int) -> float:
    """Accepted draft tokens / drafted tokens (drafts stop at a stop token, so positions before
    a stop only); 0 before any draft."""
    return accepted / drafted if drafted else 0.0


def mean_accepted_length(accepted: int, rounds: int) -> float:
    """1 + accepted / verify rounds: tokens a round adds, the verifier's own token counted."""
    return 1.0 + accepted / rounds if rounds else 0.0


def verify_ms(base_ms: float, per_token_ms: float, k: int) -> float:
    """A verify pass over k drafts: the target is fed k + 1 tokens (the last committed one too)."""
    return base_ms + per_token_ms * (k + 1)


def round_ms(
    rtt_ms: float, k: int, draft_ms_per_token: float, verify: float, wait_ms: float = 0.0
) -> float:
    """Wall time of one speculation round: draft k, send, wait for the model, verify, answer."""
    return rtt_ms + k * draft_ms_per_token + wait_ms + verify


def pipeline_hit_probability(acceptance: float, k: int, guess_right: float) -> float:
    """P(a round drafted ahead is used) = a^k x P(guess right).

    The next round is drafted while round i is in flight, after round i's k drafts and the
    drafter's guess of the verifier's bonus token; it is used only if every draft is kept and the
    bonus equals the guess.
    """
    return clamp_acceptance(acceptance) ** k * clamp_acceptance(guess_right)


def pipelined_round_ms(
    rtt_ms: float,
    k: int,
    draft_ms_per_token: float,
    verify: float,
    hit: float,
    wait_ms: float = 0.0,
) -> float:
    """Expected wall time between the sends of two rounds when the edge drafts ahead.

    While round i (k drafts) is in flight (RTT + wait + verify), the drafter feeds its last
    draft to guess the bonus token and drafts the next k after it: (k + 1) draft steps. With
    probability ``hit`` (``pipeline_hit_probability``) that round leaves as soon as both the
    verdict and the drafts are there; otherwise the drafts are dropped and the next round is
    drafted after the verdict, as without pipelining. At ``hit`` = 0 this is ``round_ms``.
    """
    hit = clamp_acceptance(hit)
    in_flight = rtt_ms + wait_ms + verify
    ahead = (k + 1) * draft_ms_per_token
    return hit * max(in_flight, ahead) + (1.0 - hit) * (in_flight + k * draft_ms_per_token)


@dataclass
class VerifyCostFit:
    """Least-squares fit of verify ms = base + slope x tokens fed, from observed passes.

    ``forget`` < 1 weighs old passes down geometrically, so the fit follows a node whose speed
    changes (other work on the machine, thermal limits) without forgetting at once.
    """

    forget: float = 1.0  # weight an observation keeps per newer one; 1 keeps them all equal
    _sums: list[float] = field(default_factory=lambda: [0.0] * 5, repr=False)  # n sx sy sxx sxy

    def observe(self, tokens: int, ms: float) -> None:
        """One pass over ``tokens`` fed positions took ``ms``."""
        x = float(tokens)
        for i, v in enumerate((1.0, x, ms, x * x, x * ms)):
            self._sums[i] = self.forget * self._sums[i] + v

    @property
    def observed(self) -> bool:
        """Whether any pass has been seen."""
        return self._sums[0] > 0

    def fit(self) -> tuple[float, float]:
        """(base ms, ms per token fed), both >= 0; the priors before any pass.

        With a single distinct x the slope is unknown, so it is 0 and the base is the mean.
        """
        n, sx, sy, sxx, sxy = self._sums
        if n <= 0:
            return PRIOR_VERIFY_BASE_MS, PRIOR_VERIFY_PER_TOKEN_MS
        den = n * sxx - sx * sx
        slope = max((n * sxy - sx * sy) / den, 0.0) if den > 1e-9 * max(n * sxx, 1.0) else 0.0
        return max((sy - slope * sx) / n, 0.0), slope
