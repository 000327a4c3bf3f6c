"""The edge's drafter: k tokens and their draft distributions over a committed sequence."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.base import CausalLM
from models.sampling import SamplingParams, probs, sample
from models.speculative import Proposal


@dataclass(frozen=True)
class DraftResult:
    """A proposal and the drafter time it took."""

    proposal: Proposal
    ms: float


class Drafter:
    """Holds the drafter's cache over one sequence and drafts from its end.

    Before each draft the cache is caught up with whatever the cloud committed since; after a
    verdict it is rolled back to the longest prefix that is still part of the sequence.
    """

    def __init__(self, lm: CausalLM, params: SamplingParams) -> None:
        self.lm = lm
        self.params = params
        self.rng = np.random.default_rng(params.seed + 1)  # edge and cloud draw independently
        self.session = lm.session()

    def propose(self, committed: Sequence[int], k: int) -> DraftResult:
        """Draft ``k`` tokens after ``committed``."""
        t0 = time.perf_counter()
        s = self.session
        if s.length >= len(committed):  # nothing new to feed: recompute the last position
            s.truncate(len(committed) - 1)
        logits = s.extend(list(committed[s.length :]))[-1]
        tokens, dists = [], []
        for i in range(k):
            p = probs(logits, self.params)
            tok = sample(p, self.rng)
            tokens.append(tok)
            dists.append(p)
            if i < k - 1:
                logits = s.extend([tok])[-1]
        q = None if self.params.greedy else np.stack(dists)
        ms = (time.perf_counter() - t0) * 1e3
        return DraftResult(Proposal(np.asarray(tokens, dtype=np.int64), q), ms)

    def rollback(self, base: int, k: int, accepted: int) -> None:
        """Keep the cached drafts the verdict accepted (the last draft was never fed)."""
        self.session.truncate(min(self.session.length, base + min(accepted, k - 1)))
