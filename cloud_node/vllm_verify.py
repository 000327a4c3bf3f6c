"""Verdicts of verify rounds from what vLLM returns, lossless as ``models.speculative.verify``.

vLLM gives no logits array; it gives logprobs. Which logprobs, and of which distribution:

- **Greedy** (temperature 0): one request over context + drafts with ``prompt_logprobs=1``. Each
  prompt row gives the drafted token's rank and the argmax. A draft is kept while its rank is 1;
  at the first other rank the argmax is the next token; when every draft is kept, the token vLLM
  generates greedily after them is the bonus. Exact (up to exact ties between two logits).
- **Sampled at temperature 1, top-p 1**: prompt logprobs are of the raw distribution, which is
  then the request's own, so the same one request gives p(x) of every draft
  (``prompt_logprobs=0``) and samples the bonus token.
- **Sampled otherwise**: vLLM's prompt logprobs ignore temperature and top-p (they are
  ``log_softmax`` of the raw logits; the normaliser at temperature T needs the whole vocabulary).
  So each draft position gets its own one-token request (context + the drafts before it), sampled
  at the request's temperature and top-p with ``logprob_token_ids=[draft]``; the engine runs with
  ``logprobs_mode="processed_logprobs"``, so the returned logprobs are of the distribution the
  token is sampled from: p(x) exactly, after temperature and nucleus. The k + 1 requests share the
  prefix cache and run in one engine step.

Acceptance: draft x_i is kept with probability min(1, p_i(x_i) / q_i(x_i)). At the first
rejection the next token must follow normalize(max(0, p_i - q_i)); without the vocabulary this is
drawn exactly by rejection: draw y from p_i (vLLM samples position i with a seed drawn from the
session's generator), keep y with probability max(0, p_i(y) - q_i(y)) / p_i(y), else draw again.
The kept y has probability p(y) * (p(y) - q(y))+ / p(y) / Z = (p(y) - q(y))+ / Z.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from models.sampling import SamplingParams
from models.speculative import Verdict

SEED_RANGE = 2**31 - 1  # vLLM request seeds are drawn in [0, SEED_RANGE)


def one_request(params: SamplingParams) -> bool:
    """Whether one prompt-logprobs request gives this round's p (greedy, or T = 1 and top-p 1)."""
    return params.greedy or (params.temperature == 1.0 and params.top_p == 1.0)


def draft_rows(prompt_logprobs: Sequence[Any], n: int, k: int) -> list[dict[int, Any]]:
    """The k prompt-logprob rows (dicts id -> Logprob) of the drafts at positions n .. n+k-1."""
    rows = list(prompt_logprobs[n : n + k])
    if len(rows) != k or any(r is None for r in rows):
        raise ValueError(f"vLLM returned {len(rows)} prompt-logprob rows for {k} drafts")
    return rows


def argmax_of(row: dict[int, Any]) -> int:
    """The token of rank 1 in a prompt-logprob row."""
    return int(min(row.items(), key=lambda kv: (kv[1].rank, kv[0]))[0])


def greedy_verdict(drafts: Sequence[int], rows: Sequence[dict[int, Any]], bonus: int) -> Verdict:
    """Keep drafts while each is the argmax (rank 1) of its row; else the argmax comes next."""
    for i, (x, row) in enumerate(zip(drafts, rows, strict=True)):
        if row[x].rank != 1:
            return Verdict(i, argmax_of(row))
    return Verdict(len(drafts), bonus)


def greedy_from_draws(drafts: Sequence[int], argmaxes: Sequence[int], bonus: int) -> Verdict:
    """Greedy verdict from the argmax at each draft position (one-token greedy requests)."""
    for i, (x, y) in enumerate(zip(drafts, argmaxes, strict=True)):
        if x != y:
            return Verdict(i, int(y))
    return Verdict(len(drafts), bonus)


def draft_probs(drafts: Sequence[int], rows: Sequence[dict[int, Any]]) -> list[float]:
    """p(x_i) of each draft from its row (a logprob of -inf is probability 0)."""
    return [math.exp(row[x].logprob) for x, row in zip(drafts, rows, strict=True)]


def sampled_logprob(completion: Any, token: int) -> float:
    """The logprob of ``token`` at a completion's first sampled position."""
    return float(completion.logprobs[0][token].logprob)


def kept_drafts(
    drafts: Sequence[int], p: Sequence[float], q: np.ndarray, rng: np.random.Generator
) -> int:
    """How many leading drafts pass min(1, p/q) (one uniform draw per draft examined)."""
    for i, x in enumerate(drafts):
        qx = float(q[i, x])
        if not (qx > 0 and rng.random() < min(1.0, p[i] / qx)):
            return i
    return len(drafts)


def keep_candidate(p_y: float, q_y: float, rng: np.random.Generator) -> bool:
    """Keep a token y drawn from p with probability max(0, p(y) - q(y)) / p(y)."""
    if p_y <= 0:  # vLLM never samples a token it gives probability 0; refuse it all the same
        return False
    return rng.random() < max(0.0, p_y - q_y) / p_y


def seed(rng: np.random.Generator) -> int:
    """A vLLM request seed from a session's generator, so a session's run repeats."""
    return int(rng.integers(SEED_RANGE))
