"""The cloud's model loop: iteration-level scheduling of verify rounds and cloud-only generation.

As in Orca and vLLM, the unit of scheduling is one forward pass, not one request. Each iteration
runs ONE ``extend_batch`` over the verify rounds waiting then (each feeds its k drafts, after the
committed tokens its cache lacks) and one decode step of every active generation (one token, or
its prompt in its first iteration). A long generation therefore never holds the model: a verify
round that arrives while it runs joins the next iteration, and rounds of any k and generations
share every pass.

Verification runs inside the model-thread call, batched over the iteration's rounds
(``models.speculative.verify_batch``), so the event loop only converts messages and resolves
futures.

Priorities: a call whose iteration holds verify rounds asks for the thread at VERIFY; a call of
generation only asks at GENERATE, after step work, and its grant is promoted to VERIFY when a
round arrives while it waits. A generation-only call runs iterations back to back (an idle node
pays no thread hand-off per token) and returns the thread as soon as a round or step work waits,
a newcomer could join, or ``passes_per_call`` is reached; a call holding rounds returns after its
one iteration, so verdicts leave at once.

Costs: every member of an iteration (round or generation) is charged its share of the
iteration's wall time and thread CPU in proportion to the tokens it fed; a generation's prompt
counts in full in its first iteration. A round's ``model_ms`` is the whole iteration's wall time:
the compute its edge waited for, which the edge subtracts from its round time to see the network.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cloud_node.costs import CostTracker
from cloud_node.errors import RequestError, model_failure
from cloud_node.generation import Generation, GenerationQueue
from cloud_node.model_thread import Grant, ModelThread, Priority
from models.base import CausalLM, LMSession
from models.sampling import SamplingParams
from models.speculative import Proposal, Verdict, verify_batch


@dataclass(frozen=True)
class LoopLimits:
    """How verify rounds enter iterations."""

    max_batch: int = 16  # verify rounds in one iteration at the most
    max_wait_ms: float = 0.0  # extra wait for rounds to fill an iteration that has no generation
    queue_limit: int = 256  # verify rounds waiting at the most; past it, RESOURCE_EXHAUSTED


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
    model_ms: float  # wall time of the iteration that served it
    model_cpu_s: float  # its share of that iteration's thread CPU seconds, by tokens fed
    batch_size: int  # verify rounds served by that iteration
    share_ms: float = 0.0  # its share of that iteration's wall time, by tokens fed


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


@dataclass(eq=False)
class PendingRound:
    """A round waiting for, or in, an iteration."""

    round: Round
    session: Session = field(repr=False)
    future: asyncio.Future[RoundResult] = field(repr=False)


@dataclass
class EngineStats:
    """Counters exposed as metrics."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    batches: int = 0  # iterations that held verify rounds
    batched_rounds: int = 0
    iterations: int = 0  # forward passes of the model loop
    generation_passes: int = 0  # iterations that held generations
    generated_tokens: int = 0
    verify_model_s: float = 0.0  # wall seconds charged to verify rounds (shares by tokens fed)
    generate_model_s: float = 0.0  # wall seconds charged to generations (shares by tokens fed)
    expired_sessions: int = 0
    rejected: int = 0  # requests refused with a status, each counted once (by the servicer)


@dataclass
class _Outcome:
    """What one model-thread call did, for the event loop to hand out."""

    results: list[tuple[PendingRound, RoundResult]] = field(default_factory=list)
    finished: list[Generation] = field(default_factory=list)
    iterations: int = 0
    generation_passes: int = 0
    verify_pass: tuple[int, float] | None = None  # (tokens fed, wall ms) of the rounds' pass
    generate_ms: float = 0.0  # wall ms charged to generations


class IterationLoop:
    """Runs iterations on the model thread while verify rounds wait or generations are active."""

    def __init__(
        self,
        lm: CausalLM,
        thread: ModelThread,
        limits: LoopLimits,
        generations: GenerationQueue,
        stats: EngineStats,
        costs: CostTracker,
    ) -> None:
        self.lm = lm
        self.thread = thread
        self.limits = limits
        self.generations = generations
        self.stats = stats
        self.costs = costs
        self._rounds: deque[PendingRound] = deque()  # waiting, oldest first
        self._serving: list[PendingRound] = []  # in the model-thread call running now
        self._wake = asyncio.Event()
        self._grant: Grant | None = None  # the loop's turn while it waits for the thread
        self._task: asyncio.Task[None] | None = None

    @property
    def waiting_rounds(self) -> int:
        """Verify rounds queued for an iteration."""
        return len(self._rounds)

    def start(self) -> None:
        """Start the loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the loop; rounds and generations not answered fail as unavailable."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._fail_all(RequestError("unavailable", "cloud node is stopping"))

    def _fail_all(self, err: RequestError) -> None:
        """Fail every round and generation not answered yet with ``err``."""
        for p in [*self._rounds, *self._serving]:
            if not p.future.done():
                p.future.set_exception(RequestError(err.kind, str(err)))
        self._rounds.clear()
        self.generations.fail_all(err)

    def wake(self) -> None:
        """New work: a generation was admitted."""
        self._wake.set()

    def enqueue(self, p: PendingRound) -> None:
        """Queue a round for the next iteration; RequestError("exhausted") when the queue is
        full."""
        if len(self._rounds) >= self.limits.queue_limit:
            raise RequestError(
                "exhausted", f"verify queue full ({self.limits.queue_limit} rounds waiting)"
            )
        self._rounds.append(p)
        if self._grant is not None:  # the loop waits behind step work: a round outranks it
            self._grant.promote(Priority.VERIFY)
        self._wake.set()

    # ------------------------------------------------------------------ on the event loop
    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._rounds or self.generations.next_batch():
                await self._fill()
                await self._call()

    async def _fill(self) -> None:
        """With rounds only, wait ``max_wait_ms`` for more to share the iteration."""
        lim = self.limits
        if lim.max_wait_ms > 0 and 0 < len(self._rounds) < lim.max_batch:
            if not self.generations.next_batch():
                await asyncio.sleep(lim.max_wait_ms / 1e3)

    async def _call(self) -> None:
        grant = self.thread.grant(Priority.VERIFY if self._rounds else Priority.GENERATE)
        self._grant = grant
        try:
            async with grant:  # what the iteration holds is decided once the thread is ours
                self._grant = None
                rounds, gens = self._take_rounds(), self.generations.next_batch()
                if rounds or gens:
                    await self._serve(grant, rounds, gens)
        except RequestError as err:  # the thread refused the grant: the node is stopping
            self._fail_all(err)
        finally:
            self._grant = None

    def _take_rounds(self) -> list[PendingRound]:
        out: list[PendingRound] = []
        while self._rounds and len(out) < self.limits.max_batch:
            p = self._rounds.popleft()
            if not p.future.done():  # its caller went away
                out.append(p)
        return out

    async def _serve(
        self, grant: Grant, rounds: list[PendingRound], gens: list[Generation]
    ) -> None:
        self._serving = rounds
        try:
            out, _, _ = await grant.call(lambda: self._iterate(rounds, gens))
        except RequestError as err:  # the node is stopping
            self._fail(rounds, gens, lambda e=err: RequestError(e.kind, str(e)))
            return
        except Exception as exc:  # a model failure fails its iteration, never the loop
            self._fail(rounds, gens, lambda e=exc: model_failure("model iteration", e))
            return
        finally:
            self._serving = []
        self._hand_out(out)

    def _hand_out(self, out: _Outcome) -> None:
        st = self.stats
        st.iterations += out.iterations
        st.generation_passes += out.generation_passes
        st.generate_model_s += out.generate_ms / 1e3
        if out.verify_pass is not None:
            self.costs.observe_verify(*out.verify_pass)
            st.batches += 1
            st.batched_rounds += len(out.results)
        for p, res in out.results:
            st.rounds += 1
            st.drafted += len(p.round.proposal.tokens)
            st.accepted += res.verdict.accepted
            st.verify_model_s += res.share_ms / 1e3
            if not p.future.done():
                p.future.set_result(res)
        for g in out.finished:
            if not g.future.done():
                g.future.set_result(g.result())

    def _fail(
        self,
        rounds: list[PendingRound],
        gens: list[Generation],
        error: Callable[[], Exception],
    ) -> None:
        for fut in [*(p.future for p in rounds), *(g.future for g in gens)]:
            if not fut.done():
                fut.set_exception(error())

    # ------------------------------------------------------------------ on the model thread
    def _iterate(self, rounds: list[PendingRound], gens: list[Generation]) -> _Outcome:
        """Iterations over ``rounds`` (the first only) and ``gens``, back to back while only
        generations remain and nothing else needs the thread."""
        out, live = _Outcome(), list(gens)
        while True:
            live = self._step(rounds, live, out)
            if rounds or not live or self._should_yield(live, len(gens), out.iterations):
                return out

    def _should_yield(self, live: list[Generation], taken: int, iterations: int) -> bool:
        # read across threads: lengths and a counter only, each read atomic
        room = len(live) < self.generations.limits.batch and self.generations.active > taken
        return (
            iterations >= self.generations.limits.passes_per_call
            or self.thread.urgent_waiting()
            or bool(self._rounds)
            or room
        )

    def _step(
        self, rounds: list[PendingRound], gens: list[Generation], out: _Outcome
    ) -> list[Generation]:
        """One iteration: one forward pass, the rounds' verdicts, one token per generation;
        the generations that go on."""
        t0, c0 = time.perf_counter(), time.thread_time()
        feeds = [_round_feed(p) for p in rounds] + [g.feed() for g in gens]
        sessions = [p.session.lm_session for p in rounds] + [g.session for g in gens]
        logits = self.lm.extend_batch(sessions, feeds)
        verdicts = verify_batch(
            [p.round.proposal for p in rounds],
            [
                lg[-(len(p.round.proposal.tokens) + 1) :]
                for p, lg in zip(rounds, logits, strict=False)
            ],
            [p.session.params for p in rounds],
            [p.session.rng for p in rounds],
        )
        for p, v in zip(rounds, verdicts, strict=True):
            _commit(p, v)
        going, done = [], []
        for g, lg in zip(gens, logits[len(rounds) :], strict=True):
            (done if g.take(lg[-1]) else going).append(g)
        ms, cpu = (time.perf_counter() - t0) * 1e3, time.thread_time() - c0
        fed = [len(f) for f in feeds]
        total = sum(fed)
        for p, v, n in zip(rounds, verdicts, fed, strict=False):
            res = _result(p, v, ms, cpu * n / total, ms * n / total, len(rounds))
            p.session.last_result = res  # a retry is answered again, even if its caller left
            out.results.append((p, res))
        for g, n in zip(gens, fed[len(rounds) :], strict=True):
            g.charge(ms, n / total, cpu)
            out.generate_ms += ms * n / total
        out.finished += done
        out.iterations += 1
        out.generation_passes += bool(gens)
        if rounds:
            out.verify_pass = (total, ms)
        return going


def _round_feed(p: PendingRound) -> list[int]:
    """Roll the session's cache back to its committed tokens (minus the last, whose logits the
    round needs) and return what the round feeds: those missing tokens, then its drafts."""
    s, n = p.session, p.round.base_position
    cached = min(s.lm_session.length, n - 1)
    s.lm_session.truncate(cached)
    return s.committed[cached:n] + p.round.proposal.tokens.tolist()


def _commit(p: PendingRound, v: Verdict) -> None:
    """Apply a verdict: committed tokens grow by the kept drafts and the next token; the cache
    keeps the committed tokens minus the last one (fed by the next round)."""
    s, n = p.session, p.round.base_position
    s.committed += [*p.round.proposal.tokens[: v.accepted].tolist(), v.next_token]
    s.lm_session.truncate(n + v.accepted)


def _result(
    p: PendingRound, v: Verdict, ms: float, cpu_s: float, share_ms: float, batch: int
) -> RoundResult:
    r = p.round
    n = len(p.session.committed)
    return RoundResult(r.session_id, r.round_id, r.base_position, v, n, ms, cpu_s, batch, share_ms)


__all__ = [
    "EngineStats",
    "IterationLoop",
    "LoopLimits",
    "PendingRound",
    "Round",
    "RoundResult",
    "Session",
]
