"""Token speculation from the edge: draft k, have the cloud verify over a gRPC stream, repeat.

If the cloud goes away mid-request the edge asks for another cloud node and reopens the session
over the tokens committed so far; with none left it finishes alone and says so.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import grpc
import numpy as np

from edge_node.adaptive import AdaptiveK, RoundMeasure
from edge_node.drafter import MAX_SUPPORT, Drafter, DraftResult
from models.base import CausalLM, Tokenizer
from models.fingerprint import fingerprint
from models.generate import StopRule, catch_up, decode
from models.sampling import SamplingParams, probs, sample
from models.speculative import Proposal
from node_runtime.errors import Precondition
from node_runtime.kinds import KPolicy, Mode
from node_runtime.serving import log_event
from tandem_wire.caps import MAX_MESSAGE_BYTES
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("tandem.edge")
SPECULATION, CLOUD_ONLY = Mode.SPECULATION, Mode.CLOUD_ONLY
T = TypeVar("T")
# Stream errors after which another cloud (or the edge alone) takes over; INVALID_ARGUMENT is ours.
FAILOVER_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ABORTED,
}


@dataclass
class Account:
    """Where the work of one request ran and what it cost."""

    generated_tokens: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    verify_rounds: int = 0
    full_rounds: int = 0  # rounds in which every draft was kept
    wall_s: float = 0.0
    cloud_model_cpu_s: float = 0.0
    edge_model_s: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    ttft_s: float = 0.0
    k_history: list[int] = field(default_factory=list)
    plan_revisions: int = 0  # times the plan changed mode or cloud mid-request
    started: float = field(default_factory=time.perf_counter, repr=False)


@dataclass
class SpecResult:
    """Generated tokens and how they were made."""

    tokens: list[int]
    account: Account
    degraded: bool = False
    cloud_node: str = ""
    note: str = ""
    final_mode: Mode = SPECULATION  # the mode that produced the last tokens


@dataclass(frozen=True)
class SpecSettings:
    """One speculation request's knobs."""

    max_new: int  # tokens to generate at the most
    eos_id: int | None  # stop after this token
    k: int = 4  # starting draft length
    k_policy: KPolicy | str = KPolicy.HEURISTIC  # fixed, heuristic or rtt
    k_max: int = 16  # never draft more than this
    round_timeout_s: float = 10.0  # deadline of each verify round
    stop_ids: tuple[int, ...] = ()  # more tokens to stop after (a step delimiter, say)

    @property
    def stops(self) -> frozenset[int]:
        """Every token that ends the request."""
        return frozenset(self.stop_ids) | ({self.eos_id} if self.eos_id is not None else set())


CloudPicker = Callable[[Sequence[str]], Awaitable[tuple[str, pb_grpc.CloudStub] | None]]


@dataclass(frozen=True)
class Replan:
    """A revised plan for the rest of a request."""

    mode: Mode  # speculation or cloud-only
    cloud: tuple[str, pb_grpc.CloudStub]  # the cloud's id and a stub to it
    k: int  # draft length the plan assumed


@dataclass
class Hooks:
    """Optional callbacks a request runs with."""

    on_tokens: Callable[[list[int]], None] | None = None  # newly committed tokens, in order
    observe_rtt: Callable[[str, float], None] | None = None  # (cloud id, network ms) per round
    # asked every ``replan_every`` rounds and after an RTT jump: (tokens left, current cloud id)
    replan: Callable[[int, str], Awaitable[Replan | None]] | None = None
    replan_every: int = 8  # rounds between plan revisions
    rtt_jump: float = 2.0  # a round this many times slower than usual asks for a plan at once


def proposal_to_wire(sid: str, rid: int, base: int, p: Proposal) -> pb.SpecRequest:
    """Draft tokens and their sparse q as a VerifyRequest.

    q row i travels as the ids where q_i > 0, ascending, and their float32 probabilities. The
    drafter's rows are float32 values over a support of at most ``MAX_SUPPORT`` tokens, so this
    is q exactly, at most ``draft_wire_bytes`` a draft.
    """
    q = []
    if p.q is not None:
        for row in p.q:
            ids = np.nonzero(row > 0)[0]
            q.append(pb.DraftDist(ids=ids.tolist(), probs=row[ids].astype(np.float32).tolist()))
    return pb.SpecRequest(
        verify=pb.VerifyRequest(
            session_id=sid, round_id=rid, base_position=base, draft=p.tokens.tolist(), q=q
        )
    )


# A verify message without drafts: tags, a session id of up to 128 bytes, round id, base.
_ROUND_OVERHEAD_BYTES = 192


def draft_wire_bytes(support: int) -> int:
    """Bytes one sampled draft adds to a verify message at the most: the token (a 5-byte
    varint) and its q row (two packed fields of ``support`` varint ids and float32s)."""
    return 5 + 2 * (1 + 5) + support * (5 + 4)


def max_draft_in_message(support: int = MAX_SUPPORT, cap: int = MAX_MESSAGE_BYTES) -> int:
    """The largest k whose verify message stays within the message cap."""
    return max(1, (cap - _ROUND_OVERHEAD_BYTES) // draft_wire_bytes(support))


def verdict_fault(
    v: pb.VerifyReply, sid: str, rid: int, base: int, drafted: int, vocab_size: int
) -> str | None:
    """What is wrong with a verdict for round ``rid`` over ``drafted`` drafts at ``base``, or
    None. A cloud that answers a wrong verdict is treated as lost: nothing it says is kept."""
    if v.session_id != sid or v.round_id != rid:
        return f"verdict for session {v.session_id!r} round {v.round_id}, expected round {rid}"
    if v.base_position != base:
        return f"verdict at base_position {v.base_position}, expected {base}"
    if not 0 <= v.accepted <= drafted:
        return f"accepted {v.accepted} outside [0, {drafted}]"
    if not 0 <= v.next_token < vocab_size:
        return f"next_token {v.next_token} outside the vocabulary of {vocab_size}"
    if v.position != base + v.accepted + 1:
        return f"position {v.position}, expected {base + v.accepted + 1}"
    return None


class _CloudLost(Exception):
    pass


def _draw(params: SamplingParams, rng: np.random.Generator, logits: np.ndarray) -> int:
    return sample(probs(logits, params), rng)


class _Switch(Exception):
    def __init__(self, plan: Replan) -> None:
        super().__init__(plan.mode)
        self.plan = plan


@dataclass
class _Req:
    """One request's state while it runs."""

    committed: list[int]
    n_prompt: int
    params: SamplingParams
    settings: SpecSettings
    drafter: Drafter
    ctl: AdaptiveK
    acc: Account
    hooks: Hooks

    stopped: bool = False  # a stop token (EOS, a delimiter) ended the reply

    def commit(self, tokens: list[int]) -> None:
        """Append the part of ``tokens`` that belongs to the reply and stream exactly that:
        nothing past ``max_new`` and nothing after a stop token."""
        tokens = tokens[: max(self.left(), 0)]
        stops = self.settings.stops
        end = next((i + 1 for i, t in enumerate(tokens) if t in stops), None)
        if end is not None:
            tokens, self.stopped = tokens[:end], True
        self.committed.extend(tokens)
        if tokens and self.hooks.on_tokens is not None:
            self.hooks.on_tokens(tokens)

    def left(self) -> int:
        return self.settings.max_new - (len(self.committed) - self.n_prompt)


class Speculator:
    """Runs speculation requests for one edge node over its drafter."""

    def __init__(
        self,
        lm: CausalLM,
        pool: ThreadPoolExecutor | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self.lm = lm
        self.pool = pool or ThreadPoolExecutor(1, thread_name_prefix="drafter")
        # sent with token ids, so a cloud of another tokenizer refuses them; and for cloud-only
        # text with such a cloud
        self.tok = tokenizer
        self.tokenizer_id = fingerprint(tokenizer) if tokenizer is not None else ""

    async def compute(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the drafter thread (one model user at a time)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn)

    async def run(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        settings: SpecSettings,
        pick_cloud: CloudPicker,
        hooks: Hooks | None = None,
        first: tuple[str, pb_grpc.CloudStub] | None = None,
        start_mode: Mode = SPECULATION,
    ) -> SpecResult:
        """Generate after ``prompt`` with the cloud verifying; never loses the request.

        ``first`` is the cloud to start on (a plan's choice); ``pick_cloud`` finds the next one
        when a cloud is lost. ``start_mode`` cloud-only sends the whole request to the cloud.
        """
        t0 = time.perf_counter()
        r = _Req(
            list(prompt),
            len(prompt),
            params,
            settings,
            Drafter(self.lm, params),
            AdaptiveK(settings.k_policy, settings.k, settings.k_max),
            Account(),
            hooks or Hooks(),
        )
        tried: list[str] = []
        note, cloud_name, mode, preferred = "", "", start_mode, first
        while not self._done(r):
            picked = preferred or await pick_cloud(tried)
            preferred = None
            if picked is None:
                note = f"no cloud node available; {note}" if note else "no cloud node available"
                break
            cloud_name, stub = picked
            tried.append(cloud_name)
            try:
                if mode == CLOUD_ONLY:
                    await self._generate_rest(r, stub)
                else:
                    await self._session(r, cloud_name, stub)
            except _CloudLost as exc:
                note = f"cloud {cloud_name} lost: {exc}"
                log_event(log, "cloud_lost", logging.WARNING, cloud=cloud_name, reason=str(exc))
            except _Switch as sw:
                r.acc.plan_revisions += 1
                mode, preferred = sw.plan.mode, sw.plan.cloud
                tried = [t for t in tried if t != sw.plan.cloud[0]]
                log_event(log, "plan_revised", mode=mode, cloud=sw.plan.cloud[0], k=sw.plan.k)
        degraded = not self._done(r)
        if degraded:  # finish alone from what is committed
            await self._finish_alone(r)
            log_event(log, "degraded_to_edge", logging.WARNING, reason=note)
        out = r.committed[len(prompt) :]  # commit kept the reply only: what was streamed
        acc = r.acc
        acc.generated_tokens = len(out)
        acc.wall_s = time.perf_counter() - t0
        acc.ttft_s = acc.ttft_s or acc.wall_s
        final = Mode.EDGE_ONLY if degraded else Mode(mode)
        return SpecResult(out, acc, degraded, "" if degraded else cloud_name, note, final)

    def _done(self, r: _Req) -> bool:
        return r.stopped or r.left() <= 0 or len(r.committed) >= self.lm.max_len - 1

    async def _session(self, r: _Req, cloud: str, stub: pb_grpc.CloudStub) -> None:
        s, acc, hooks = r.settings, r.acc, r.hooks
        sid = uuid.uuid4().hex
        call = stub.Speculate(timeout=s.round_timeout_s * (s.max_new + 2))
        p = r.params
        sampling = pb.Sampling(temperature=p.temperature, top_p=p.top_p, seed=p.seed)
        open_msg = pb.OpenSession(
            session_id=sid, prompt=r.committed, sampling=sampling, tokenizer=self.tokenizer_id
        )
        net_ewma: float | None = None
        try:
            opened = await self._exchange(call, pb.SpecRequest(open=open_msg), s, acc)
            if opened.opened.position != len(r.committed) or opened.opened.session_id != sid:
                raise _CloudLost(f"bad session answer: {opened.WhichOneof('kind')}")
            k_cap = min(s.k_max, opened.opened.max_draft or s.k_max)
            if not r.params.greedy:
                k_cap = min(k_cap, max_draft_in_message(r.drafter.max_support))
            for rid in itertools.count(1):
                if self._done(r):
                    break
                base = len(r.committed)
                room = min(self.lm.max_len - 1 - base, r.left())
                want = max(1, min(r.ctl.k, k_cap, room))
                propose = partial(r.drafter.propose, list(r.committed), want, s.stops)
                draft: DraftResult = await self.compute(propose)
                acc.edge_model_s += draft.ms / 1e3
                k = len(draft.proposal.tokens)  # fewer than asked when a stop ended the draft
                t_send = time.perf_counter()
                msg = proposal_to_wire(sid, rid, base, draft.proposal)
                reply = await self._exchange(call, msg, s, acc)
                if not reply.HasField("verdict"):
                    raise _CloudLost(f"expected a verdict, got {reply.WhichOneof('kind')}")
                v = reply.verdict
                fault = verdict_fault(v, sid, rid, base, k, self.lm.vocab_size)
                if fault is not None:
                    raise _CloudLost(f"bad verdict: {fault}")
                round_ms = (time.perf_counter() - t_send) * 1e3
                r.commit([*draft.proposal.tokens[: v.accepted].tolist(), v.next_token])
                r.drafter.rollback(base, k, v.accepted)
                acc.ttft_s = acc.ttft_s or time.perf_counter() - acc.started
                acc.verify_rounds += 1
                acc.drafted_tokens += k
                acc.accepted_tokens += v.accepted
                acc.full_rounds += int(v.accepted == k)
                acc.cloud_model_cpu_s += v.model_cpu_s
                acc.k_history.append(k)
                r.ctl.update(RoundMeasure(k, v.accepted, round_ms, draft.ms, v.model_ms))
                net = max(round_ms - v.model_ms, 0.0)
                if hooks.observe_rtt is not None:
                    hooks.observe_rtt(cloud, net)
                jump = net_ewma is not None and net > hooks.rtt_jump * net_ewma + 1.0
                net_ewma = net if net_ewma is None else 0.7 * net_ewma + 0.3 * net
                if hooks.replan is not None and (jump or rid % hooks.replan_every == 0):
                    await self._maybe_switch(r, cloud)
            await call.write(pb.SpecRequest(close=pb.CloseSession(session_id=sid)))
            await call.done_writing()
        except grpc.aio.AioRpcError as exc:
            if exc.code() in FAILOVER_CODES:
                raise _CloudLost(f"{exc.code().name}: {exc.details()}") from exc
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:  # another tokenizer, say
                raise Precondition(f"cloud {cloud}: {exc.details()}") from exc
            raise
        except (asyncio.TimeoutError, asyncio.InvalidStateError, ConnectionError) as exc:
            raise _CloudLost(type(exc).__name__) from exc
        finally:
            call.cancel()

    async def _maybe_switch(self, r: _Req, cloud: str) -> None:
        assert r.hooks.replan is not None
        plan = await r.hooks.replan(r.left(), cloud)
        if plan is None:
            return
        if plan.mode == SPECULATION and plan.cloud[0] == cloud:
            if r.ctl.policy == KPolicy.FIXED:
                r.ctl.k = max(1, min(plan.k, r.ctl.k_max))
            return
        raise _Switch(plan)

    async def _generate_rest(self, r: _Req, stub: pb_grpc.CloudStub) -> None:
        """Cloud-only from what is committed (a revised plan moved the request there).

        The prompt goes as ids and as text: a cloud of another tokenizer generates from the text
        and its reply is read as text, re-encoded with this edge's tokenizer.
        """
        p = r.params
        req = pb.GenerateRequest(
            prompt=r.committed,
            max_new_tokens=r.left(),
            sampling=pb.Sampling(temperature=p.temperature, top_p=p.top_p, seed=p.seed),
            prompt_text=self.tok.decode(r.committed) if self.tok is not None else "",
            tokenizer=self.tokenizer_id,
        )
        r.acc.bytes_sent += req.ByteSize()
        try:
            reply = await stub.Generate(req, timeout=r.settings.round_timeout_s * 4)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in FAILOVER_CODES:
                raise _CloudLost(f"{exc.code().name}: {exc.details()}") from exc
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise Precondition(f"cloud: {exc.details()}") from exc
            raise
        r.acc.bytes_received += reply.ByteSize()
        r.acc.cloud_model_cpu_s += reply.model_cpu_s
        r.acc.ttft_s = r.acc.ttft_s or time.perf_counter() - r.acc.started
        if self.tok is None or reply.tokenizer == self.tokenizer_id or not reply.tokenizer:
            r.commit(list(reply.tokens))
            return
        eos = r.settings.eos_id
        r.commit(self.tok.encode(reply.text) + ([eos] if reply.ended and eos is not None else []))
        r.stopped = True  # the cloud wrote the whole rest; its length in our tokens differs

    @staticmethod
    async def _exchange(
        call: grpc.aio.StreamStreamCall, msg: pb.SpecRequest, s: SpecSettings, acc: Account
    ) -> pb.SpecReply:
        acc.bytes_sent += msg.ByteSize()
        await asyncio.wait_for(call.write(msg), s.round_timeout_s)
        reply = await asyncio.wait_for(call.read(), s.round_timeout_s)
        if reply is grpc.aio.EOF:
            raise _CloudLost("stream closed by the cloud")
        acc.bytes_received += reply.ByteSize()
        return reply

    async def _finish_alone(self, r: _Req) -> None:
        def work() -> list[int]:
            t0 = time.perf_counter()
            d = r.drafter
            pending = catch_up(d.session, r.committed)
            rule = StopRule(r.left(), self.lm.max_len - 1, r.settings.stops)
            # the reply itself: drawn from the drafter's whole distribution, no q to send
            pick = partial(_draw, r.params, d.rng)
            out = decode(d.session, pending, pick, rule).tokens
            r.acc.edge_model_s += time.perf_counter() - t0
            return out

        if not self._done(r):
            r.commit(await self.compute(work))
