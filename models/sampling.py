"""Turning logits into the distribution a request samples from (temperature, top-p)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are chosen; travels with every request."""

    temperature: float = 0.0  # 0 means greedy (argmax); otherwise logits are divided by it
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose mass reaches top_p
    seed: int = 0  # seeds the sampler of each side, so a run can be repeated

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0 and np.isfinite(self.temperature)):
            raise ValueError(f"temperature must be finite and >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def probs(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Row-wise sampling distribution [..., V] (one-hot argmax when greedy)."""
    logits = np.asarray(logits, dtype=np.float64)
    if params.greedy:
        out = np.zeros_like(logits)
        np.put_along_axis(out, logits.argmax(-1)[..., None], 1.0, axis=-1)
        return out
    z = logits / params.temperature
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(-1, keepdims=True)
    if params.top_p < 1.0:
        order = np.argsort(-p, axis=-1)
        sorted_p = np.take_along_axis(p, order, axis=-1)
        before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass strictly before each token
        keep_sorted = before < params.top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(-1, keepdims=True)
    return p


def sample(p: np.ndarray, rng: np.random.Generator) -> int:
    """One token from a 1-D distribution."""
    c = np.cumsum(p)
    return int(min(np.searchsorted(c, rng.random() * c[-1], side="right"), len(p) - 1))


def restrict_support(p: np.ndarray, max_support: int) -> np.ndarray:
    """``p`` on its ``max_support`` most likely tokens, renormalized, in float32 precision.

    A drafter that samples from this distribution has a q that is zero outside a small support,
    so sending q's nonzero entries as float32 sends q exactly: lossless verification needs only
    the q the draft was really drawn from, whatever its shape.
    """
    if max_support < 1:
        raise ValueError(f"max_support must be >= 1, got {max_support}")
    p = np.asarray(p, dtype=np.float64)
    if np.count_nonzero(p) > max_support:
        keep = np.argpartition(-p, max_support - 1)[:max_support]
        kept = np.zeros_like(p)
        kept[keep] = p[keep]
        p = kept
    return (p / p.sum()).astype(np.float32).astype(np.float64)
