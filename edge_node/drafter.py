"""The edge's drafter: up to k tokens and their draft distributions over a committed sequence,
and the next round drafted ahead while a round is in flight (pipelined speculation)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial

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


class AheadSignal:
    """The verdict of the round in flight, as the drafter thread reads it between two tokens.

    Set once by the event loop when the verdict arrives; drafting ahead stops at the next token
    once the verdict shows the guess wrong (PipeInfer's early cancellation).
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._bonus: int | None = None  # the verifier's token when every draft was kept

    def settle(self, all_kept: bool, next_token: int) -> None:
        """Record the verdict: whether every draft was kept, and the token the verifier added."""
        self._bonus = next_token if all_kept else None
        self._event.set()  # after the write, so a reader that sees the event sees the token

    def drop(self) -> None:
        """The round in flight will never be settled (the cloud was lost): stop drafting ahead."""
        self.settle(False, -1)

    def rejected(self) -> bool:
        """Whether the verdict is known and rejected a draft (no guess can be right)."""
        return self._event.is_set() and self._bonus is None

    def wasted(self, guess: int) -> bool:
        """Whether drafting after ``guess`` is known to be of no use."""
        return self._event.is_set() and self._bonus != guess


@dataclass(frozen=True)
class Ahead:
    """The next round, drafted while round i was in flight, and what it assumed."""

    base: int  # committed length round i started at
    sent: int  # drafts of round i
    guess: int  # the drafter's guess of round i's bonus token; -1: no guess was made
    draft: DraftResult | None  # drafts after base + sent + guess; None: none (stopped early, stop)
    ms: float  # drafter time spent, guess included
    drafted: int = 0  # tokens drafted ahead, those of a draft stopped early included


class _Wasted(Exception):
    pass


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
        self._ahead_count = 0  # rounds drafted ahead: each draws from a generator of its own

    def q(self, logits: np.ndarray) -> np.ndarray:
        """The distribution a draft is drawn from at these logits."""
        p = probs(logits, self.params)
        return p if self.params.greedy else restrict_support(p, self.max_support)

    def propose(
        self, committed: Sequence[int], k: int, stop_ids: Collection[int] = ()
    ) -> DraftResult:
        """Draft up to ``k`` tokens after ``committed``; drafting ends after a stop id (EOS),
        since nothing after it belongs to the reply."""
        draft, _ = self._draft(committed, k, stop_ids, self.rng)
        assert draft is not None
        return draft

    def _draft(
        self,
        committed: Sequence[int],
        k: int,
        stop_ids: Collection[int],
        rng: np.random.Generator,
        wasted: Callable[[], bool] | None = None,
    ) -> tuple[DraftResult | None, int]:
        """``propose`` drawing from ``rng``; ``wasted`` is asked before each token, and when it
        says so drafting is abandoned: (None, tokens drafted so far), the cache holding what
        was fed."""
        t0 = time.perf_counter()
        dists: list[np.ndarray] = []

        def pick(logits: np.ndarray) -> int:
            if wasted is not None and wasted():
                raise _Wasted
            q = self.q(logits)
            dists.append(q)
            return sample(q, rng)

        pending = catch_up(self.session, committed)
        rule = StopRule(k, self.lm.max_len, frozenset(stop_ids))
        try:
            tokens = decode(self.session, pending, pick, rule).tokens
        except _Wasted:
            return None, len(dists)
        q = None if self.params.greedy else np.stack(dists)
        ms = (time.perf_counter() - t0) * 1e3
        return DraftResult(Proposal(np.asarray(tokens, dtype=np.int64), q), ms), len(tokens)

    def rollback(self, base: int, k: int, accepted: int) -> None:
        """Keep the cached drafts the verdict accepted and nothing after them: the last draft
        was never fed, and a guess and drafts ahead (when any) follow the k drafts."""
        self.session.truncate(min(self.session.length, base + min(accepted, k)))

    def draft_ahead(
        self,
        committed: Sequence[int],
        drafts: Sequence[int],
        k: int,
        stop_ids: Collection[int],
        signal: AheadSignal,
    ) -> Ahead:
        """Guess the bonus token of the round in flight and draft the next ``k`` after it.

        The guess g is the drafter's most likely token after ``committed + drafts``: no
        randomness is drawn for it, and it is never sent. It only picks the prefix the next
        drafts are drawn after; those are drawn from q at that prefix exactly as ``propose``
        would, from a generator of their own (seeded by the request's seed and the count of
        rounds drafted ahead), so that how far a dropped round got, which depends on timing,
        changes no later draw and a seed still gives one output. Drafting stops early once
        ``signal`` shows the guess wrong. No guess is made when the last draft is a stop id,
        and nothing is drafted after a guess that is one.
        """
        t0 = time.perf_counter()
        base, stops = len(committed), frozenset(stop_ids)
        self._ahead_count += 1  # on every call: whether it returns early depends on timing
        rng = np.random.default_rng((self.params.seed + 1, self._ahead_count))
        if k < 1 or not drafts or drafts[-1] in stops or signal.rejected():
            return Ahead(base, len(drafts), -1, None, 0.0)
        seq = [*committed, *drafts]
        guess = int(self.session.extend(catch_up(self.session, seq))[-1].argmax())
        draft, n = None, 0
        if guess not in stops and not signal.wasted(guess):
            wasted = partial(signal.wasted, guess)
            draft, n = self._draft([*seq, guess], k, stops, rng, wasted)
        ms = (time.perf_counter() - t0) * 1e3
        return Ahead(base, len(drafts), guess, draft, ms, n)

    def settle(self, ahead: Ahead, accepted: int, next_token: int) -> DraftResult | None:
        """After round i's verdict: the round drafted ahead when the verdict kept every draft
        and added the guessed token, else None, with the cache rolled back to what the verdict
        kept (the guess and the drafts after it dropped)."""
        hit = accepted == ahead.sent and next_token == ahead.guess and ahead.draft is not None
        if hit:
            return ahead.draft
        self.rollback(ahead.base, ahead.sent, accepted)
        return None
