"""Verification sessions of a cloud node and the batcher that serves their rounds together.

Domain code only: no gRPC here. Every model call runs on one worker thread, so the asyncio loop
keeps accepting requests while a batch computes, and the CPU seconds of each forward pass can be
measured with the thread clock and shared among the rounds it served.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from cloud_node.costs import CostTracker
from models.base import CausalLM, LMSession
from models.generate import generate
from models.sampling import SamplingParams
from models.speculative import Proposal, Verdict, verify

T = TypeVar("T")


class RequestError(Exception):
    """Bad input or overload, with the gRPC-neutral kind the servicer maps to a status code."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # invalid, not_found, exhausted


@dataclass(frozen=True)
class EngineConfig:
    """Limits and batching of one cloud node."""

    max_sessions: int = 256  # open verification sessions at the most
    session_ttl_s: float = 120.0  # an idle session is dropped after this
    max_draft: int = 16  # largest k a round may carry
    max_batch: int = 16  # rounds served by one forward pass at the most
    max_wait_ms: float = 0.0  # extra wait for a batch to fill; 0 serves what is queued at once
    queue_limit: int = 256  # rounds waiting at the most; past it, RESOURCE_EXHAUSTED


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
    model_cpu_s: float = 0.0
    busy_s: float = 0.0
    generated_tokens: int = 0
    expired_sessions: int = 0
    rejected: int = 0


class VerifyEngine:
    """Sessions, validation, and a batcher over one target model."""

    def __init__(self, lm: CausalLM, config: EngineConfig = EngineConfig()) -> None:
        self.lm = lm
        self.config = config
        self.sessions: dict[str, Session] = {}
        self.stats = EngineStats()
        self.started = time.monotonic()
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=config.queue_limit)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")
        self._worker: asyncio.Task[None] | None = None
        self.costs = CostTracker()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the batching worker on the running loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the worker; pending rounds fail."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        while not self._queue.empty():
            p = self._queue.get_nowait()
            if not p.future.done():
                p.future.set_exception(RequestError("exhausted", "cloud node is stopping"))
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def run_model(self, fn: Callable[[], T]) -> tuple[T, float, float]:
        """Run ``fn`` on the model thread; return its result, wall ms and thread CPU seconds."""

        def timed() -> tuple[T, float, float]:
            t0, c0 = time.perf_counter(), time.thread_time()
            out = fn()
            return out, (time.perf_counter() - t0) * 1e3, time.thread_time() - c0

        out, ms, cpu = await asyncio.get_running_loop().run_in_executor(self._pool, timed)
        self.stats.busy_s += ms / 1e3
        self.stats.model_cpu_s += cpu
        return out, ms, cpu

    # ------------------------------------------------------------------ sessions
    def open(self, session_id: str, prompt: Sequence[int], params: SamplingParams) -> int:
        """Open (or reopen) a session over ``prompt``; return the committed length."""
        self.expire()
        if not session_id or len(session_id) > 128:
            raise RequestError("invalid", "session_id must be 1 to 128 characters")
        if not prompt:
            raise RequestError("invalid", "prompt must hold at least one token")
        if len(prompt) >= self.lm.max_len:
            raise RequestError(
                "invalid", f"prompt of {len(prompt)} tokens exceeds max_len {self.lm.max_len}"
            )
        self._check_vocab(prompt, "prompt")
        if session_id not in self.sessions and len(self.sessions) >= self.config.max_sessions:
            raise RequestError("exhausted", f"all {self.config.max_sessions} sessions are in use")
        self.sessions[session_id] = Session(
            self.lm.session(),
            list(prompt),
            params,
            np.random.default_rng(params.seed),
            time.monotonic(),
        )
        return len(prompt)

    def close(self, session_id: str) -> bool:
        """Forget a session; False when it was not open."""
        return self.sessions.pop(session_id, None) is not None

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

    def _check_vocab(self, tokens: Sequence[int], field_name: str) -> None:
        v = self.lm.vocab_size
        for t in tokens:
            if not 0 <= t < v:
                raise RequestError("invalid", f"{field_name}: token id {t} outside [0, {v})")

    # ------------------------------------------------------------------ verification
    def validate(self, r: Round) -> Session:
        """The round's session, or a RequestError naming what is wrong with the round."""
        s = self.sessions.get(r.session_id)
        if s is None:
            raise RequestError("not_found", f"unknown session {r.session_id!r}")
        k = len(r.proposal.tokens)
        if not 1 <= k <= self.config.max_draft:
            raise RequestError("invalid", f"draft length {k} outside [1, {self.config.max_draft}]")
        self._check_vocab(r.proposal.tokens.tolist(), "draft")
        if r.base_position + k > self.lm.max_len - 1:
            raise RequestError(
                "invalid",
                f"base_position {r.base_position} + {k} drafts exceed max_len {self.lm.max_len}",
            )
        if not s.params.greedy and r.proposal.q is None:
            raise RequestError("invalid", "q: sampled requests must send draft distributions")
        return s

    async def submit(self, r: Round) -> RoundResult:
        """Verify one round (batched with others); idempotent on round_id."""
        s = self.validate(r)
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
        except asyncio.QueueFull:
            self.stats.rejected += 1
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
        return self._queue.qsize()

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
            except Exception as exc:  # a model failure fails its rounds, never the worker
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc)
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
        logits, ms, cpu = await self.run_model(lambda: self.lm.extend_batch(sessions, feeds))
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
        self, prompt: Sequence[int], params: SamplingParams, max_new: int, eos_id: int | None
    ) -> tuple[list[int], float, float]:
        """Autoregressive target generation; tokens, wall ms, CPU seconds."""
        if not prompt:
            raise RequestError("invalid", "prompt must hold at least one token")
        if len(prompt) >= self.lm.max_len:
            raise RequestError(
                "invalid", f"prompt of {len(prompt)} tokens exceeds max_len {self.lm.max_len}"
            )
        if max_new < 1:
            raise RequestError("invalid", "max_new_tokens must be at least 1")
        self._check_vocab(prompt, "prompt")
        tokens, ms, cpu = await self.run_model(
            lambda: generate(self.lm, prompt, params, max_new, eos_id)
        )
        self.stats.generated_tokens += len(tokens)
        self.costs.observe_generate(len(tokens), ms)
        return tokens, ms, cpu

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
            "acceptance_rate": st.accepted / st.drafted if st.drafted else 0.0,
            "mean_accepted_length": 1 + st.accepted / st.rounds if st.rounds else 0.0,
            "batches": float(st.batches),
            "mean_batch_size": st.batched_rounds / st.batches if st.batches else 0.0,
            "model_cpu_s": st.model_cpu_s,
            "busy_fraction": min(1.0, st.busy_s / up),
            "generated_tokens": float(st.generated_tokens),
            "expired_sessions": float(st.expired_sessions),
            "rejected_rounds": float(st.rejected),
        }
