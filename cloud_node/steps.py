"""Reasoning steps on the cloud: scoring partial solutions (batched across calls) and writing steps.

Scoring calls from concurrent requests wait in one bounded queue; whenever the model thread is
free, everything queued is scored in one pass, the way verify rounds are batched. Step work goes
on the model thread after verify rounds and before cloud-only generation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from cloud_node.engine import VerifyEngine
from cloud_node.errors import RequestError, model_failure
from cloud_node.model_thread import Priority
from models.reasoning.proposer import LMStepProposer, StepDraft
from models.reasoning.protocols import Item, StepScorer


@dataclass(frozen=True)
class StepConfig:
    """Limits of the step services."""

    max_items: int = 256  # partial solutions in one call at the most
    max_batch_items: int = 512  # partial solutions in one scoring pass at the most
    queue_limit: int = 64  # calls waiting at the most; past it, RESOURCE_EXHAUSTED
    max_steps: int = 64  # steps in one partial solution at the most
    max_chars: int = 4096  # characters in one question or step at the most


@dataclass(frozen=True)
class Rewrite:
    """A step the target rewrote from its rejected draft."""

    index: int  # which step of the partial solution it replaces
    step: StepDraft
    ms: float  # model time of the rewrite
    draft_kept: int  # tokens of the draft the target kept


@dataclass(frozen=True)
class Walk:
    """One partial solution scored, and its rejected steps rewritten up to the first change."""

    scores: list[float]
    ms: float  # model time of the scoring pass
    batch: int  # partial solutions that pass served
    confirmed: int  # rejected steps the target wrote the same
    rewrite: Rewrite | None  # the first rewrite that changed a step, if any


@dataclass
class _Pending:
    scorer: str
    items: list[Item]
    future: asyncio.Future[tuple[list[list[float]], float, int]]


class StepService:
    """ScoreSteps and GenerateStep over the cloud's model thread."""

    def __init__(
        self,
        engine: VerifyEngine,
        scorers: dict[str, StepScorer],
        writer: LMStepProposer | None,
        config: StepConfig = StepConfig(),
    ) -> None:
        if not scorers:
            raise ValueError("a step service needs at least one scorer")
        self.engine = engine
        self.scorers = scorers
        self.default = next(iter(scorers))
        self.writer = writer
        self.config = config
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=config.queue_limit)
        self._worker: asyncio.Task[None] | None = None
        self.counts = {
            "score_calls": 0,
            "scored_items": 0,
            "score_passes": 0,
            "steps_written": 0,
            "draft_tokens_kept": 0,
        }

    async def stop(self) -> None:
        """Stop the scoring worker; calls still queued fail as unavailable."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        while not self._queue.empty():
            p = self._queue.get_nowait()
            if not p.future.done():
                p.future.set_exception(RequestError("unavailable", "cloud node is stopping"))

    def _check(self, items: Sequence[Item]) -> None:
        c = self.config
        if not items or len(items) > c.max_items:
            raise RequestError("invalid", f"items: 1 to {c.max_items} partial solutions")
        for i, (question, steps) in enumerate(items):
            if not question or len(question) > c.max_chars:
                raise RequestError("invalid", f"items[{i}].question: 1 to {c.max_chars} characters")
            if len(steps) > c.max_steps or any(len(s) > c.max_chars for s in steps):
                raise RequestError("invalid", f"items[{i}].steps: too many or too long")

    async def score(
        self, items: Sequence[Item], scorer: str = ""
    ) -> tuple[list[list[float]], float, int]:
        """One score per step of every item; the pass's ms and how many items it served."""
        name = scorer or self.default
        if name not in self.scorers:
            raise RequestError("invalid", f"scorer {name!r} not in {sorted(self.scorers)}")
        self._check(items)
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())
        fut: asyncio.Future[tuple[list[list[float]], float, int]] = (
            asyncio.get_running_loop().create_future()
        )
        try:
            self._queue.put_nowait(_Pending(name, list(items), fut))
        except asyncio.QueueFull:
            raise RequestError("exhausted", "scoring queue full") from None
        self.counts["score_calls"] += 1
        return await fut

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            for name in {p.scorer for p in batch}:
                group = [p for p in batch if p.scorer == name and not p.future.done()]
                await self._serve(name, group)

    async def _serve(self, name: str, group: list[_Pending]) -> None:
        while group:
            take, n = [], 0
            while group and (not take or n + len(group[0].items) <= self.config.max_batch_items):
                take.append(group.pop(0))
                n += len(take[-1].items)
            items = [it for p in take for it in p.items]
            scorer = self.scorers[name]
            try:
                scores, ms, _ = await self.engine.run_model(
                    partial(scorer.score_batch, items), Priority.STEPS
                )
            except RequestError as err:  # the node is stopping
                for p in take:
                    if not p.future.done():
                        p.future.set_exception(RequestError(err.kind, str(err)))
                continue
            except Exception as exc:  # a scorer failure fails its calls, never the worker
                for p in take:
                    if not p.future.done():
                        p.future.set_exception(model_failure("scoring pass", exc))
                continue
            self.counts["scored_items"] += len(items)
            self.counts["score_passes"] += 1
            i = 0
            for p in take:
                if not p.future.done():
                    p.future.set_result((scores[i : i + len(p.items)], ms, len(items)))
                i += len(p.items)

    async def write_step(
        self,
        question: str,
        steps: Sequence[str],
        temperature: float,
        seed: int,
        max_tokens: int,
        draft: str = "",
        delimiter: str = "",
    ) -> tuple[StepDraft, float, int]:
        """The target's next step after ``steps``, the model ms it took and the draft tokens kept.

        With greedy sampling a ``draft`` of the step is checked as token speculation: the step is
        the same, but the target decodes only past the part of the draft it agrees with.
        """
        if self.writer is None:
            raise RequestError("precondition", "this cloud node writes no steps (no tokenizer)")
        self._check([(question, [*steps, draft])])
        try:
            writer = self.writer.with_delimiter(delimiter)
        except ValueError as exc:
            raise RequestError("invalid", f"delimiter: {exc}") from None
        cap = max_tokens or None
        if draft and temperature <= 0:
            (step, kept), ms, _ = await self.engine.run_model(
                lambda: writer.rewrite(question, steps, draft, cap), Priority.STEPS
            )
        else:
            drafts, ms, _ = await self.engine.run_model(
                lambda: writer.propose(question, [steps], 1, temperature, seed, cap), Priority.STEPS
            )
            step, kept = drafts[0][0], 0
        self.counts["steps_written"] += 1
        self.counts["draft_tokens_kept"] += kept
        return step, ms, kept

    async def score_and_rewrite(
        self,
        question: str,
        steps: Sequence[str],
        scorer: str,
        below: float,
        start: int,
        delimiter: str = "",
    ) -> Walk:
        """Score one partial solution, then walk its steps from ``start`` on: the target rewrites
        each step scoring below ``below``, with that step as its draft, before the reply goes out.

        A rewrite that comes out the same as the draft was a false alarm of the scorer: the step
        stays and the walk goes on, since the later steps' scores were made after that same text.
        The first rewrite that differs ends the walk.
        """
        scores, ms, batch = await self.score([(question, list(steps))], scorer)
        confirmed = 0
        for i in range(max(0, start), len(steps)):
            if scores[0][i] >= below:
                continue
            step, write_ms, kept = await self.write_step(
                question, steps[:i], 0.0, 0, 0, steps[i], delimiter
            )
            if step.text != steps[i]:
                return Walk(scores[0], ms, batch, confirmed, Rewrite(i, step, write_ms, kept))
            confirmed += 1
        return Walk(scores[0], ms, batch, confirmed, None)
