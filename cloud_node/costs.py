"""What the cloud's model costs, measured as it serves: the scheduler's inputs from this node."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from models.base import CausalLM
from models.generate import generate
from models.metrics import VerifyCostFit
from models.sampling import SamplingParams


@dataclass
class CostTracker:
    """Running estimates of verify ms = base + slope * tokens fed, and target ms per token.

    Exponentially weighted least squares, so the figures follow a node whose speed changes
    (other work on the machine, thermal limits) without forgetting at once.
    """

    forget: float = 0.97  # weight kept per new observation
    target_ms_per_token: float | None = None  # autoregressive ms per token, smoothed
    _fit: VerifyCostFit = field(init=False, repr=False)  # the shared least-squares fit

    def __post_init__(self) -> None:
        self._fit = VerifyCostFit(self.forget)

    def observe_verify(self, tokens: int, ms: float) -> None:
        """One forward pass over ``tokens`` new positions took ``ms``."""
        self._fit.observe(tokens, ms)

    def observe_generate(self, tokens: int, ms: float, alpha: float = 0.2) -> None:
        """Autoregressive generation of ``tokens`` took ``ms``."""
        if tokens <= 0:
            return
        per = ms / tokens
        old = self.target_ms_per_token
        self.target_ms_per_token = per if old is None else (1 - alpha) * old + alpha * per

    def verify_fit(self) -> tuple[float, float]:
        """(base ms, ms per token) of a verify pass; the shared priors before any pass."""
        return self._fit.fit()

    def figures(self) -> dict[str, float]:
        """The numbers published in telemetry."""
        base, slope = self.verify_fit()
        out = {"verify_base_ms": base, "verify_per_token_ms": slope}
        if self.target_ms_per_token is not None:
            out["target_ms_per_token"] = self.target_ms_per_token
        return out


def calibrate(lm: CausalLM, tracker: CostTracker, prompt: list[int], rounds: int = 3) -> None:
    """Time a few verify-sized passes and a short generation, so plans start from measurements."""
    for _ in range(rounds):
        for k in (1, 4, 8):
            s = lm.session()
            s.extend(prompt)
            t0 = time.perf_counter()
            s.extend(prompt[-1:] * (k + 1))
            tracker.observe_verify(k + 1, (time.perf_counter() - t0) * 1e3)
    t0 = time.perf_counter()
    n = len(generate(lm, prompt, SamplingParams(), 8, None))
    tracker.observe_generate(n, (time.perf_counter() - t0) * 1e3)
