"""Pipelined speculation: the next round drafted on the drafter thread while a round is in flight.

A ``Flight`` starts when a round is sent and lands when its verdict arrives: the round drafted
ahead comes back if the verdict confirmed what it assumed, otherwise it is stopped early and the
drafter's cache rolled back (``Drafter.draft_ahead`` and ``Drafter.settle`` say why this keeps
the output the target's).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial

from edge_node.drafter import Ahead, AheadSignal, Drafter, DraftResult
from models.speculative import Proposal

log = logging.getLogger("tandem.edge")


@dataclass(frozen=True)
class Landing:
    """What a round drafted ahead gave once its round's verdict was known."""

    ahead: Ahead  # what was drafted ahead, used or not
    ready: DraftResult | None  # the next round to send at once; None: dropped

    @property
    def wasted(self) -> int:
        """Tokens drafted ahead and thrown away."""
        return 0 if self.ready is not None else self.ahead.drafted


@dataclass
class Flight:
    """The next round being drafted ahead while round i (``sent`` drafts at ``base``) awaits
    its verdict."""

    signal: AheadSignal  # the verdict, as the drafter thread reads it
    future: asyncio.Future[Ahead]  # the drafting ahead, on the drafter thread
    base: int  # committed length round i started at
    sent: int  # drafts of round i

    @classmethod
    def start(
        cls,
        compute: Callable[[Callable[[], Ahead]], Awaitable[Ahead]],
        drafter: Drafter,
        committed: Sequence[int],
        drafts: Sequence[int],
        k: int,
        stop_ids: Collection[int],
    ) -> Flight:
        """Start drafting ``k`` tokens ahead through ``compute`` (the drafter thread)."""
        signal = AheadSignal()
        work = partial(drafter.draft_ahead, list(committed), list(drafts), k, stop_ids, signal)
        return cls(signal, asyncio.ensure_future(compute(work)), len(committed), len(drafts))

    def verdict(self, accepted: int, next_token: int) -> None:
        """Tell the drafter thread the verdict at once, so a wasted draft stops early."""
        self.signal.settle(accepted == self.sent, next_token)

    async def land(self, drafter: Drafter, accepted: int, next_token: int) -> Landing:
        """After ``verdict``: wait for the drafter thread, and keep or drop what it drafted."""
        ahead = await self.future
        return Landing(ahead, drafter.settle(ahead, accepted, next_token))

    async def abandon(self, drafter: Drafter) -> Ahead | None:
        """The round in flight will never get its verdict: stop drafting ahead and roll the
        cache back to the round's base, the longest prefix known to be committed."""
        self.signal.drop()
        try:
            ahead: Ahead | None = await self.future
        except Exception:  # the request is failing over or ending anyway
            log.exception("drafting ahead failed")
            ahead = None
        drafter.session.truncate(min(drafter.session.length, self.base))
        return ahead


def cut(draft: DraftResult, want: int) -> tuple[DraftResult, int]:
    """The first ``want`` drafts of ``draft`` (and their q rows), and how many were cut.

    A prefix of the drafts is itself a valid draft: each was drawn from q after the ones
    before it.
    """
    n = len(draft.proposal.tokens)
    if n <= want:
        return draft, 0
    p = draft.proposal
    q = None if p.q is None else p.q[:want]
    return DraftResult(Proposal(p.tokens[:want], q), draft.ms * want / n), n - want
