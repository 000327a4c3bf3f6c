"""The edge's drafter: up to k tokens and their draft distributions over a committed sequence."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from models.base import CausalLM
from models.generate import StopRule, catch_up, decode
from models.sampling import SamplingParams, probs, restrict_support, sample
from models.speculative import Proposal

# Tokens a sampled draft distribution keeps at the most. It bounds q on the wire to about
# 9 bytes a token (id + float32), 2.3 KB a draft, whatever the vocabulary (a dense 49k row
# was 330 KB); verification stays lossless for any q the draft was really drawn from.
MAX_SUPPORT = 256


@dataclass(frozen=True)
class DraftResult:
    """A proposal and the drafter time it took."""

    proposal: Proposal
    ms: float


class Drafter:
    """Holds the drafter's cache over one sequence and drafts from its end.

    Before each draft the cache is caught up with whatever the cloud committed since; after a
    verdict it is rolled back to the longest prefix that is still part of the sequence. Sampled
    drafts come from the request's distribution restricted to its ``max_support`` most likely
    tokens, so q is exactly sparse.
    """

    def __init__(
        self, lm: CausalLM, params: SamplingParams, max_support: int = MAX_SUPPORT
    ) -> None:
        if max_support < 1:
            raise ValueError(f"max_support must be >= 1, got {max_support}")
        self.lm = lm
        self.params = params
        self.max_support = max_support
        self.rng = np.random.default_rng(params.seed + 1)  # edge and cloud draw independently
        self.session = lm.session()

    def q(self, logits: np.ndarray) -> np.ndarray:
        """The distribution a draft is drawn from at these logits."""
        p = probs(logits, self.params)
        return p if self.params.greedy else restrict_support(p, self.max_support)

    def propose(
        self, committed: Sequence[int], k: int, stop_ids: Collection[int] = ()
    ) -> DraftResult:
        """Draft up to ``k`` tokens after ``committed``; drafting ends after a stop id (EOS),
        since nothing after it belongs to the reply."""
        t0 = time.perf_counter()
        dists: list[np.ndarray] = []

        def pick(logits: np.ndarray) -> int:
            q = self.q(logits)
            dists.append(q)
            return sample(q, self.rng)

        pending = catch_up(self.session, committed)
        rule = StopRule(k, self.lm.max_len, frozenset(stop_ids))
        tokens = decode(self.session, pending, pick, rule).tokens
        q = None if self.params.greedy else np.stack(dists)
        ms = (time.perf_counter() - t0) * 1e3
        return DraftResult(Proposal(np.asarray(tokens, dtype=np.int64), q), ms)

    def rollback(self, base: int, k: int, accepted: int) -> None:
        """Keep the cached drafts the verdict accepted (the last draft was never fed)."""
        self.session.truncate(min(self.session.length, base + min(accepted, k - 1)))
