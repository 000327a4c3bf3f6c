"""The one decode loop, and plain autoregressive generation on it (cloud-only and edge-only modes).

Every caller that decodes token by token (generation, the edge's drafter and its local finish,
the step proposer's sampling, rewriting and multi-step drafting) runs ``decode_batch``, so stop
ids, EOS, token caps, the sequence limit and KV-cache extension follow one set of rules.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np

from models.base import CausalLM, LMSession
from models.sampling import SamplingParams, probs, sample

# Extends several sessions by one feed each; ``CausalLM.extend_batch`` is one.
Extend = Callable[[Sequence[LMSession], Sequence[Sequence[int]]], list[np.ndarray]]
# Chooses the token of one row from the logits of its next position: (row, logits) -> token.
Pick = Callable[[int, np.ndarray], int]


class Stop(str, enum.Enum):
    """Why a row stopped decoding."""

    STOP_ID = "stop_id"  # it emitted a stop id (EOS, a step delimiter), kept as its last token
    MAX_LEN = "max_len"  # the sequence reached the length limit
    MAX_NEW = "max_new"  # it emitted its cap of new tokens
    BUDGET = "budget"  # the batch's token budget ran out before the row finished


@dataclass(frozen=True)
class StopRule:
    """When decoding stops; every row of a batch follows the same rule."""

    max_new: int  # new tokens per row at the most
    max_len: int  # the sequence (cached + pending + new tokens) never grows past this
    stop_ids: frozenset[int] = frozenset()  # tokens that end a row after being emitted


@dataclass(frozen=True)
class Decoded:
    """The tokens one row emitted and why it stopped; its last token was never fed."""

    tokens: list[int]
    stop: Stop

    @property
    def finished(self) -> bool:
        """The row ended by its own rule, not by the batch's budget."""
        return self.stop != Stop.BUDGET


def argmax(logits: np.ndarray) -> int:
    """The greedy token."""
    return int(logits.argmax())


def sampler(params: SamplingParams, rng: np.random.Generator) -> Pick:
    """A pick that samples from the request's distribution (argmax when greedy)."""
    return lambda _, logits: sample(probs(logits, params), rng)


def _stop_before(rule: StopRule, length: int) -> Stop | None:
    if rule.max_new <= 0:
        return Stop.MAX_NEW
    return Stop.MAX_LEN if length >= rule.max_len else None


def decode_batch(
    extend: Extend,
    sessions: Sequence[LMSession],
    pending: Sequence[Sequence[int]],
    pick: Pick,
    rule: StopRule,
    budget: int | None = None,
    first: Sequence[np.ndarray] | None = None,
) -> list[Decoded]:
    """Decode every row until its rule stops it or ``budget`` tokens were emitted in all.

    ``pending`` holds each row's tokens not yet in its cache (at least one for a row that
    decodes), unless ``first`` gives every row's logits for its next position, which a caller
    may have at hand (then ``pending`` rows are empty). Rows advance together, one batched
    ``extend`` per step, and are picked in order, so a shared sampler draws in a fixed order. A
    row's last emitted token is not fed: the caller feeds it with its next call, or truncates.
    When the budget binds, the first rows get the last tokens.
    """
    n = len(sessions)
    out: list[list[int]] = [[] for _ in range(n)]
    length = [s.length + len(p) for s, p in zip(sessions, pending, strict=True)]
    stop: list[Stop | None] = [_stop_before(rule, x) for x in length]
    feed = [list(p) for p in pending]
    live = [i for i in range(n) if stop[i] is None]
    used = 0
    while live and (budget is None or used < budget):
        if first is not None:  # logits at hand: the first step feeds nothing
            logits = [np.asarray(first[i])[None] for i in live]
            first = None
        else:
            logits = extend([sessions[i] for i in live], [feed[i] for i in live])
        if budget is not None:
            live = live[: budget - used]
        nxt = []
        for i, lg in zip(live, logits, strict=False):
            token = pick(i, lg[-1])
            out[i].append(token)
            used += 1
            length[i] += 1
            if token in rule.stop_ids:
                stop[i] = Stop.STOP_ID
            elif length[i] >= rule.max_len:
                stop[i] = Stop.MAX_LEN
            elif len(out[i]) >= rule.max_new:
                stop[i] = Stop.MAX_NEW
            else:
                nxt.append(i)
                feed[i] = [token]
        live = nxt
    return [Decoded(t, s or Stop.BUDGET) for t, s in zip(out, stop, strict=True)]


def _extend_one(sessions: Sequence[LMSession], feeds: Sequence[Sequence[int]]) -> list[np.ndarray]:
    return [sessions[0].extend(list(feeds[0]))]


def decode(
    session: LMSession,
    pending: Sequence[int],
    pick: Callable[[np.ndarray], int],
    rule: StopRule,
    first: np.ndarray | None = None,
) -> Decoded:
    """``decode_batch`` for one session, extended through its own ``extend``; ``first`` is the
    logits of its next position when the caller has them."""
    rows = None if first is None else [first]
    return decode_batch(
        _extend_one, [session], [pending], lambda _, lg: pick(lg), rule, None, rows
    )[0]


def catch_up(session: LMSession, sequence: Sequence[int]) -> list[int]:
    """The tokens of ``sequence`` to feed next, after rolling the cache back so that at least
    the last one is fed again (its logits are needed) and nothing past ``sequence`` is kept.

    The cache must hold a prefix of ``sequence``, possibly followed by tokens past its end.
    """
    if session.length >= len(sequence):
        session.truncate(len(sequence) - 1)
    return list(sequence[session.length :])


def generate(
    lm: CausalLM,
    prompt: Sequence[int],
    params: SamplingParams,
    max_new: int,
    eos_id: int | None,
    rng: np.random.Generator | None = None,
    stop_ids: Collection[int] = (),
) -> list[int]:
    """Up to ``max_new`` tokens after ``prompt``, stopping after ``eos_id`` or a stop id."""
    if not prompt:
        raise ValueError("generation needs a non-empty prompt")
    if len(prompt) > lm.max_len:
        raise ValueError(f"prompt of {len(prompt)} tokens exceeds max_len {lm.max_len}")
    rng = rng or np.random.default_rng(params.seed)
    stops = frozenset(stop_ids) | ({eos_id} if eos_id is not None else frozenset())
    pick = sampler(params, rng)
    rule = StopRule(max_new, lm.max_len, stops)
    return decode(lm.session(), prompt, lambda lg: pick(0, lg), rule).tokens
