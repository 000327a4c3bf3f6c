"""Drafter work in bounded chunks, so that one large request cannot hold the drafter.

The drafter runs on one thread (one model user at a time) that serves work in the order it is
submitted. A proposal of many candidates is split into chunks of at most ``rows`` candidates,
submitted one after another, each once the previous one is done: a request arriving meanwhile
waits for one chunk, not for the whole proposal, and requests share the drafter turn by turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial

from models.reasoning.proposer import StepDraft, StepProposer

Drafts = list[list[StepDraft]]
UNSTARTED = StepDraft("", 0, False, False)  # a candidate the token cap left no room for
_SEED_STRIDE = 0x9E3779B97F4A7C15  # spreads the seeds of a call's chunks apart


@dataclass(frozen=True)
class Chunk:
    """One turn on the drafter: ``n`` candidates for each of some prefixes."""

    prefixes: tuple[int, ...]  # indices of the call's prefixes
    n: int  # candidates per prefix
    seed: int  # the first chunk keeps the call's seed, so a one-chunk call is unchanged


def plan_chunks(n_prefixes: int, n: int, seed: int, rows: int) -> list[Chunk]:
    """Chunks of at most ``rows`` candidates covering ``n`` candidates of every prefix."""
    if rows < 1 or n < 1:
        raise ValueError(f"rows and n must be >= 1, got {rows} and {n}")
    parts: list[tuple[tuple[int, ...], int]] = []
    if n >= rows:  # one prefix at a time, its n candidates split
        for i in range(n_prefixes):
            parts += [((i,), min(rows, n - s)) for s in range(0, n, rows)]
    else:  # several prefixes a chunk, all n candidates of each
        per = rows // n
        parts = [(tuple(range(s, min(s + per, n_prefixes))), n) for s in range(0, n_prefixes, per)]
    return [Chunk(p, k, (seed + i * _SEED_STRIDE) % 2**64) for i, (p, k) in enumerate(parts)]


class ChunkedProposer:
    """A StepProposer that runs another on the drafter's executor, a chunk at a time."""

    def __init__(self, proposer: StepProposer, pool: Executor, rows: int) -> None:
        self.proposer, self.pool, self.rows = proposer, pool, rows

    def propose(
        self,
        question: str,
        prefixes: Sequence[Sequence[str]],
        n: int,
        temperature: float,
        seed: int,
        max_tokens: int | None = None,
    ) -> Drafts:
        """Blocking: for worker threads (never the drafter's own thread)."""
        work = self._chunks(question, prefixes, n, temperature, seed, max_tokens)
        try:
            call = next(work)
            while True:
                call = work.send(self.pool.submit(call).result())
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def propose_async(
        self,
        question: str,
        prefixes: Sequence[Sequence[str]],
        n: int,
        temperature: float,
        seed: int,
        max_tokens: int | None = None,
    ) -> Drafts:
        """The same, awaited on the event loop."""
        loop = asyncio.get_running_loop()
        work = self._chunks(question, prefixes, n, temperature, seed, max_tokens)
        try:
            call = next(work)
            while True:
                call = work.send(await loop.run_in_executor(self.pool, call))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _chunks(
        self,
        question: str,
        prefixes: Sequence[Sequence[str]],
        n: int,
        temperature: float,
        seed: int,
        max_tokens: int | None,
    ) -> Generator[Callable[[], Drafts], Drafts, Drafts]:
        """Yields each chunk's call and takes its drafts; returns the drafts per prefix.

        The token cap holds over the whole call: each chunk gets what the earlier ones left.
        """
        out: Drafts = [[] for _ in prefixes]
        used = 0
        for c in plan_chunks(len(prefixes), n, seed, self.rows):
            left = None if max_tokens is None else max_tokens - used
            if left is not None and left <= 0:
                part = [[UNSTARTED] * c.n for _ in c.prefixes]
            else:
                group = [prefixes[i] for i in c.prefixes]
                call = partial(self.proposer.propose, question, group, c.n, temperature, c.seed)
                part = yield partial(call, left)
            for i, drafts in zip(c.prefixes, part, strict=True):
                out[i].extend(drafts)
                used += sum(d.tokens for d in drafts)
        return out
