"""Plain autoregressive generation through the model protocol (cloud-only and edge-only modes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.base import CausalLM
from models.sampling import SamplingParams, probs, sample


def generate(
    lm: CausalLM,
    prompt: Sequence[int],
    params: SamplingParams,
    max_new: int,
    eos_id: int | None,
    rng: np.random.Generator | None = None,
) -> list[int]:
    """Up to ``max_new`` tokens after ``prompt``, stopping after ``eos_id``."""
    if not prompt:
        raise ValueError("generation needs a non-empty prompt")
    rng = rng or np.random.default_rng(params.seed)
    session = lm.session()
    max_new = min(max_new, lm.max_len - len(prompt))
    logits = session.extend(list(prompt))[-1]
    out: list[int] = []
    for i in range(max_new):
        token = sample(probs(logits, params), rng)
        out.append(token)
        if token == eos_id or i == max_new - 1:
            break
        logits = session.extend([token])[-1]
    return out
