"""Verification sessions of a cloud node, and the engine serving them and cloud-only generation.

Domain code only: no gRPC here. Every model call runs on one worker thread (``ModelThread``);
verify rounds and cloud-only generation share its forward passes, one iteration at a time
(``cloud_node.iterations``), so a long generation never holds the model and the asyncio loop
keeps accepting requests while an iteration computes.

A session belongs to the caller that opened it (``owner``, one per verify stream): another caller
naming it is told it does not exist. Sessions idle past their TTL are swept periodically.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from cloud_node.costs import CostTracker
from cloud_node.errors import RequestError, check_prompt
from cloud_node.generation import Generated, GenerationLimits, GenerationQueue
from cloud_node.iterations import (
    EngineStats,
    IterationLoop,
    LoopLimits,
    PendingRound,
    Round,
    RoundResult,
    Session,
)
from cloud_node.model_thread import ModelThread, Priority
from cloud_node.sessions import Sessions
from models.base import CausalLM
from models.metrics import acceptance_rate, mean_accepted_length
from models.sampling import SamplingParams

T = TypeVar("T")
__all__ = [
    "EngineConfig",
    "EngineStats",
    "Priority",
    "RequestError",
    "Round",
    "RoundResult",
    "Session",
    "VerifyEngine",
]


@dataclass(frozen=True)
class EngineConfig:
    """Limits and batching of one cloud node."""

    max_sessions: int = 256  # open verification sessions at the most
    max_client_sessions: int = 64  # of those, held by one client at the most (its fair share)
    session_ttl_s: float = 120.0  # an idle session is dropped after this (swept periodically)
    max_draft: int = 16  # largest k a round may carry
    max_batch: int = 16  # verify rounds in one iteration (forward pass) at the most
    max_wait_ms: float = 0.0  # extra wait for rounds to fill an iteration without generation
    queue_limit: int = 256  # rounds waiting at the most; past it, RESOURCE_EXHAUSTED
    max_generations: int = 64  # cloud-only generations admitted at once; past it, EXHAUSTED
    max_client_generations: int = 32  # of those, held by one client at the most
    generate_batch: int = 16  # generations advanced by one iteration at the most

    def __post_init__(self) -> None:
        if not 1 <= self.max_client_sessions <= self.max_sessions:
            raise ValueError("max_client_sessions must be in [1, max_sessions]")
        if not self.session_ttl_s > 0:
            raise ValueError(f"session_ttl_s must be > 0, got {self.session_ttl_s}")
        if min(self.max_draft, self.max_batch, self.queue_limit) < 1 or self.max_wait_ms < 0:
            raise ValueError("max_draft, max_batch, queue_limit >= 1 and max_wait_ms >= 0")
        self.generation_limits()  # checks the generation bounds

    def generation_limits(self) -> GenerationLimits:
        """The bounds of cloud-only generation."""
        return GenerationLimits(
            self.max_generations, self.max_client_generations, self.generate_batch
        )

    def loop_limits(self) -> LoopLimits:
        """How verify rounds enter iterations."""
        return LoopLimits(self.max_batch, self.max_wait_ms, self.queue_limit)

    @property
    def sweep_every_s(self) -> float:
        """How often idle sessions are looked for: often enough to free them near their TTL."""
        return min(max(self.session_ttl_s / 4, 0.01), 5.0)


class VerifyEngine:
    """Sessions, validation, and the iteration loop over one target model."""

    def __init__(self, lm: CausalLM, config: EngineConfig = EngineConfig()) -> None:
        self.lm = lm
        self.config = config
        self.table: Sessions[Session] = Sessions(config, lm)
        self.sessions = self.table.sessions  # by id
        self.stats = EngineStats()
        self.started = time.monotonic()
        self.thread = ModelThread()
        self.costs = CostTracker()
        self.generations = GenerationQueue(lm, config.generation_limits())
        self.loop = IterationLoop(
            lm, self.thread, config.loop_limits(), self.generations, self.stats, self.costs
        )
        self._sweeper: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the iteration loop and the session sweeper on the running loop."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
            self.loop.start()

    async def stop(self) -> None:
        """Stop the workers; pending rounds and generations fail as unavailable."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        await self.loop.stop()
        self.thread.shutdown()

    async def run_model(
        self, fn: Callable[[], T], priority: Priority = Priority.GENERATE
    ) -> tuple[T, float, float]:
        """Run ``fn`` on the model thread once granted at ``priority``; its result, wall ms and
        thread CPU seconds."""
        return await self.thread.run(fn, priority)

    def busy_seconds(self) -> float:
        """Wall seconds the model thread has computed, the call in progress included."""
        return self.thread.busy_seconds()

    # ------------------------------------------------------------------ sessions
    def open(
        self,
        session_id: str,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        owner: object | None = None,
        client: str = "",
    ) -> int:
        """Open (or, for its owner, reopen) a session over ``prompt``; the committed length.

        ``owner`` is the caller the session belongs to (one verify stream): only callers passing
        the same object may verify, reopen or close it. ``client`` is who holds it, for the
        per-client share of sessions.
        """
        self.expire()
        self.table.admit(session_id, prompt, owner, client)
        self.sessions[session_id] = Session(
            self.lm.session(),
            list(prompt),
            params,
            np.random.default_rng(params.seed),
            time.monotonic(),
            owner,
            client,
        )
        return len(prompt)

    def close(self, session_id: str, owner: object | None = None) -> bool:
        """Forget a session of ``owner``; False when it was not open. NOT_FOUND-kind
        RequestError when another owner holds it."""
        return self.table.close(session_id, owner)

    def close_owned(self, owner: object) -> int:
        """Forget every session of ``owner`` (its stream ended); how many there were."""
        return self.table.close_owned(owner)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_every_s)
            self.expire()

    def expire(self) -> int:
        """Drop sessions idle past the TTL."""
        dead = self.table.expire()
        self.stats.expired_sessions += dead
        return dead

    # ------------------------------------------------------------------ verification
    def validate(self, r: Round, owner: object | None = None) -> Session:
        """The round's session, or a RequestError naming what is wrong with the round."""
        return self.table.validate(r, owner, min_draft=0)  # 0: decode one token (text drafts)

    async def submit(self, r: Round, owner: object | None = None) -> RoundResult:
        """Verify one round of ``owner``'s session (batched with others); idempotent on round_id."""
        s = self.validate(r, owner)
        last = s.last_result
        if last is not None and last.round_id == r.round_id:
            return last  # a retry: answer again, apply nothing twice
        if r.base_position != len(s.committed):
            raise RequestError(
                "invalid",
                f"base_position {r.base_position} does not match committed length "
                f"{len(s.committed)} of session {r.session_id!r}",
            )
        if s.busy:
            raise RequestError("invalid", f"session {r.session_id!r} already has a round in flight")
        fut: asyncio.Future[RoundResult] = asyncio.get_running_loop().create_future()
        self.loop.enqueue(PendingRound(r, s, fut))  # counted as a rejection where answered
        self.start()
        s.busy = True
        try:
            return await fut
        finally:
            s.busy = False
            s.last_used = time.monotonic()

    @property
    def queue_depth(self) -> int:
        """Verify rounds and generations waiting for an iteration to take them."""
        return self.loop.waiting_rounds + self.generations.waiting

    # ------------------------------------------------------------------ cloud-only generation
    async def generate(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        max_new: int,
        eos_id: int | None,
        client: str = "",
    ) -> Generated:
        """Autoregressive target generation, one token per iteration of the model loop;
        RequestError("exhausted") when the generation queue or ``client``'s share of it is
        full."""
        if max_new < 1:
            raise RequestError("invalid", "max_new_tokens must be at least 1")
        check_prompt(prompt, self.lm.vocab_size, self.lm.max_len)
        g = self.generations.admit(prompt, params, max_new, eos_id, client)
        self.start()
        self.loop.wake()
        try:
            out = await g.future
        finally:
            self.generations.leave(g)
        self.stats.generated_tokens += len(out.tokens)
        self.costs.observe_generate(len(out.tokens), out.model_ms)
        return out

    def metrics(self) -> dict[str, float]:
        """Counters and gauges of the engine."""
        st = self.stats
        up = max(time.monotonic() - self.started, 1e-9)
        return {
            "sessions_active": float(len(self.sessions)),
            "queue_depth": float(self.queue_depth),
            "rounds": float(st.rounds),
            "drafted_tokens": float(st.drafted),
            "accepted_tokens": float(st.accepted),
            "acceptance_rate": acceptance_rate(st.accepted, st.drafted),
            "mean_accepted_length": mean_accepted_length(st.accepted, st.rounds),
            "batches": float(st.batches),
            "mean_batch_size": st.batched_rounds / st.batches if st.batches else 0.0,
            "iterations": float(st.iterations),
            "verify_model_s": st.verify_model_s,
            "generate_model_s": st.generate_model_s,
            "model_cpu_s": self.thread.cpu_s,
            "busy_fraction": min(1.0, max(0.0, self.busy_seconds() / up)),
            "generated_tokens": float(st.generated_tokens),
            "generations_active": float(self.generations.active),
            "generation_passes": float(st.generation_passes),
            "expired_sessions": float(st.expired_sessions),
            "rejected_requests": float(st.rejected),
        }
