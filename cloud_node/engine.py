"""Verification sessions of a cloud node and the batcher that serves their rounds together.

Domain code only: no gRPC here. Every model call runs on one worker thread (``ModelThread``), so
the asyncio loop keeps accepting requests while a batch computes, verify rounds go before other
model work, and the CPU seconds of each forward pass can be measured with the thread clock and
shared among the rounds it served.

A session belongs to the caller that opened it (``owner``, one per verify stream): another caller
naming it is told it does not exist. Sessions idle past their TTL are swept periodically.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from cloud_node.costs import CostTracker
from cloud_node.errors import RequestError, model_failure
from cloud_node.generation import Generated, GenerationBatcher, GenerationLimits
from cloud_node.model_thread import ModelThread, Priority
from models.base import CausalLM, LMSession
from models.metrics import acceptance_rate, mean_accepted_length
from models.sampling import SamplingParams
from models.speculative import Proposal, Verdict, verify

T = TypeVar("T")
__all__ = ["EngineConfig", "Priority", "RequestError", "Round", "RoundResult", "VerifyEngine"]


@dataclass(frozen=True)
class EngineConfig:
    """Limits and batching of one cloud node."""

    max_sessions: int = 256  # open verification sessions at the most
    max_client_sessions: int = 64  # of those, held by one client at the most (its fair share)
    session_ttl_s: float = 120.0  # an idle session is dropped after this (swept periodically)
    max_draft: int = 16  # largest k a round may carry
    max_batch: int = 16  # rounds served by one forward pass at the most
    max_wait_ms: float = 0.0  # extra wait for a batch to fill; 0 serves what is queued at once
    queue_limit: int = 256  # rounds waiting at the most; past it, RESOURCE_EXHAUSTED
    max_generations: int = 64  # cloud-only generations admitted at once; past it, EXHAUSTED
    max_client_generations: int = 32  # of those, held by one client at the most
    generate_batch: int = 16  # generations advanced by one forward pass at the most

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

    @property
    def sweep_every_s(self) -> float:
        """How often idle sessions are looked for: often enough to free them near their TTL."""
        return min(max(self.session_ttl_s / 4, 0.01), 5.0)


@dataclass(frozen=True)
class Round:
    """One verify request, after validation."""

    session_id: str
    round_id: int
    base_position: int
    proposal: Proposal


@dataclass(frozen=True)
class RoundResult:
    """A verdict and what it cost."""

    session_id: str
    round_id: int
    base_position: int
    verdict: Verdict
    position: int  # committed length after the round
    model_ms: float  # wall time of the forward pass that served it
    model_cpu_s: float  # its share of that pass's CPU seconds
    batch_size: int


@dataclass
class Session:
    """One sequence being verified: committed tokens, target cache, sampler."""

    lm_session: LMSession
    committed: list[int]
    params: SamplingParams
    rng: np.random.Generator
    last_used: float
    owner: object | None = None  # the caller (verify stream) that opened it; only it may use it
    client: str = ""  # who holds it, for the per-client share of sessions
    last_result: RoundResult | None = None
    busy: bool = False


@dataclass
class _Pending:
    round: Round
    future: asyncio.Future[RoundResult]
    session: Session = field(repr=False)


@dataclass
class EngineStats:
    """Counters exposed as metrics."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    batches: int = 0
    batched_rounds: int = 0
    generated_tokens: int = 0
    expired_sessions: int = 0
    rejected: int = 0  # requests refused with a status, each counted once (by the servicer)


class VerifyEngine:
    """Sessions, validation, and a batcher over one target model."""

    def __init__(self, lm: CausalLM, config: EngineConfig = EngineConfig()) -> None:
        self.lm = lm
        self.config = config
        self.sessions: dict[str, Session] = {}
        self.stats = EngineStats()
        self.started = time.monotonic()
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=config.queue_limit)
        self.thread = ModelThread()
        self.generation = GenerationBatcher(lm, self.thread, config.generation_limits())
        self._tasks: list[asyncio.Task[None]] = []
        self.costs = CostTracker()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the batching worker and the session sweeper on the running loop."""
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._run()), loop.create_task(self._sweep())]
            self.generation.start()

    async def stop(self) -> None:
        """Stop the workers; pending rounds and generations fail as unavailable."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.generation.stop()
        while not self._queue.empty():
            p = self._queue.get_nowait()
            if not p.future.done():
                p.future.set_exception(RequestError("unavailable", "cloud node is stopping"))
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
        if not session_id or len(session_id) > 128:
            raise RequestError("invalid", "session_id must be 1 to 128 characters")
        self._check_prompt(prompt)
        held = self.sessions.get(session_id)
        if held is not None and held.owner is not owner:
            raise RequestError("exists", f"session_id {session_id!r} is held by another stream")
        if held is None:
            self._admit_session(client)
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

    def _admit_session(self, client: str) -> None:
        c = self.config
        if len(self.sessions) >= c.max_sessions:
            raise RequestError("exhausted", f"all {c.max_sessions} sessions are in use")
        held = sum(1 for s in self.sessions.values() if s.client == client)
        if held >= c.max_client_sessions:
            raise RequestError(
                "exhausted",
                f"client {client!r} holds {held} sessions, its share of {c.max_sessions}",
            )

    def close(self, session_id: str, owner: object | None = None) -> bool:
        """Forget a session of ``owner``; False when it was not open. NOT_FOUND-kind
        RequestError when another owner holds it."""
        if self.sessions.get(session_id) is None:
            return False
        self._session(session_id, owner)
        del self.sessions[session_id]
        return True

    def close_owned(self, owner: object) -> int:
        """Forget every session of ``owner`` (its stream ended); how many there were."""
        mine = [k for k, s in self.sessions.items() if s.owner is owner]
        for k in mine:
            del self.sessions[k]
        return len(mine)

    def _session(self, session_id: str, owner: object | None) -> Session:
        s = self.sessions.get(session_id)
        if s is None or s.owner is not owner:  # another stream's session does not exist for us
            raise RequestError("not_found", f"unknown session {session_id!r} on this stream")
        return s

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_every_s)
            self.expire()

    def expire(self) -> int:
        """Drop sessions idle past the TTL."""
        now = time.monotonic()
        dead = [
            k
            for k, s in self.sessions.items()
            if not s.busy and now - s.last_used > self.config.session_ttl_s
        ]
        for k in dead:
            del self.sessions[k]
        self.stats.expired_sessions += len(dead)
        return len(dead)

    def _check_vocab(self, tokens: Sequence[int] | np.ndarray, field_name: str) -> None:
        v = self.lm.vocab_size
        ids = np.asarray(tokens, dtype=np.int64)
        bad = np.nonzero((ids < 0) | (ids >= v))[0]
        if len(bad):
            raise RequestError("invalid", f"{field_name}: token id {ids[bad[0]]} outside [0, {v})")

    def _check_prompt(self, prompt: Sequence[int]) -> None:
        if not prompt:
            raise RequestError("invalid", "prompt must hold at least one token")
        if len(prompt) >= self.lm.max_len:
            raise RequestError(
                "invalid", f"prompt of {len(prompt)} tokens exceeds max_len {self.lm.max_len}"
            )
        self._check_vocab(prompt, "prompt")

    # ------------------------------------------------------------------ verification
    def validate(self, r: Round, owner: object | None = None) -> Session:
        """The round's session, or a RequestError naming what is wrong with the round."""
        s = self._session(r.session_id, owner)
        k = len(r.proposal.tokens)
        if not 1 <= k <= self.config.max_draft:
            raise RequestError("invalid", f"draft length {k} outside [1, {self.config.max_draft}]")
        self._check_vocab(r.proposal.tokens, "draft")
        if r.base_position + k > self.lm.max_len - 1:
            raise RequestError(
                "invalid",
                f"base_position {r.base_position} + {k} drafts exceed max_len {self.lm.max_len}",
            )
        if not s.params.greedy and r.proposal.q is None:
            raise RequestError("invalid", "q: sampled requests must send draft distributions")
        return s

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
        try:
            self._queue.put_nowait(_Pending(r, fut, s))
        except asyncio.QueueFull:  # counted as a rejection where it is answered, once
            raise RequestError(
                "exhausted", f"verify queue full ({self.config.queue_limit} rounds waiting)"
            ) from None
        s.busy = True
        try:
            return await fut
        finally:
            s.busy = False
            s.last_used = time.monotonic()

    @property
    def queue_depth(self) -> int:
        """Verify rounds and generations waiting for the model."""
        return self._queue.qsize() + self.generation.waiting

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self.config.max_wait_ms > 0 and len(batch) < self.config.max_batch:
                await asyncio.sleep(self.config.max_wait_ms / 1e3)
            while len(batch) < self.config.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [p for p in batch if not p.future.done()]  # callers that went away
            if not live:
                continue
            try:
                results = await self._serve(live)
            except RequestError as err:  # the node is stopping
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(RequestError(err.kind, str(err)))
                continue
            except Exception as exc:  # a model failure fails its rounds, never the worker
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(model_failure("verify pass", exc))
                continue
            for p, res in zip(live, results, strict=True):
                if not p.future.done():
                    p.future.set_result(res)

    async def _serve(self, batch: list[_Pending]) -> list[RoundResult]:
        feeds = []
        for p in batch:
            s, n = p.session, p.round.base_position
            cached = min(s.lm_session.length, n - 1)
            s.lm_session.truncate(cached)
            feeds.append(s.committed[cached:n] + p.round.proposal.tokens.tolist())
        sessions = [p.session.lm_session for p in batch]
        logits, ms, cpu = await self.run_model(
            lambda: self.lm.extend_batch(sessions, feeds), Priority.VERIFY
        )
        self.costs.observe_verify(sum(len(f) for f in feeds), ms)
        results = []
        for p, lg in zip(batch, logits, strict=True):
            r, s = p.round, p.session
            k = len(r.proposal.tokens)
            verdict = verify(r.proposal, lg[-(k + 1) :], s.params, s.rng)
            n = r.base_position
            s.committed += [*r.proposal.tokens[: verdict.accepted].tolist(), verdict.next_token]
            s.lm_session.truncate(n + verdict.accepted)  # cache = committed minus its last token
            res = RoundResult(
                r.session_id,
                r.round_id,
                n,
                verdict,
                len(s.committed),
                ms,
                cpu / len(batch),
                len(batch),
            )
            s.last_result = res
            self.stats.rounds += 1
            self.stats.drafted += k
            self.stats.accepted += verdict.accepted
            results.append(res)
        self.stats.batches += 1
        self.stats.batched_rounds += len(batch)
        return results

    # ------------------------------------------------------------------ cloud-only generation
    async def generate(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        max_new: int,
        eos_id: int | None,
        client: str = "",
    ) -> Generated:
        """Autoregressive target generation, batched with other generations; RequestError
        ("exhausted") when the generation queue or ``client``'s share of it is full."""
        if max_new < 1:
            raise RequestError("invalid", "max_new_tokens must be at least 1")
        self._check_prompt(prompt)
        out = await self.generation.generate(prompt, params, max_new, eos_id, client)
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
            "model_cpu_s": self.thread.cpu_s,
            "busy_fraction": min(1.0, max(0.0, self.busy_seconds() / up)),
            "generated_tokens": float(st.generated_tokens),
            "generations_active": float(self.generation.active),
            "generation_passes": float(self.generation.passes),
            "expired_sessions": float(st.expired_sessions),
            "rejected_requests": float(st.rejected),
        }
