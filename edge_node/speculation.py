"""Token speculation from the edge: draft k, have the cloud verify over a gRPC stream, repeat.

Pipelined (``SpecSettings.pipelined``), the edge keeps drafting while a round is in flight, as
SpecEdge's proactive drafting and PipeInfer's continuous speculation do: it guesses the round's
bonus token g and drafts the next round after the round's drafts and g. If the verdict keeps every
draft and adds g, that round leaves at once; otherwise it is dropped (stopped early, the drafter's
cache rolled back) and the next round is drafted as usual. The output stays the target's: see
``Drafter.draft_ahead`` and ``Speculator._session``.

If the cloud goes away mid-request the edge asks for another cloud node and reopens the session
over the tokens committed so far; with none left it finishes alone and says so.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import TypeVar

import grpc
import numpy as np

from edge_node.adaptive import AdaptiveK, RoundMeasure
from edge_node.drafter import MAX_SUPPORT, Ahead, Drafter, DraftResult
from edge_node.pipeline import Flight, cut
from edge_node.spec_types import Account, CloudPicker, Hooks, Replan, SpecResult, SpecSettings
from edge_node.text_drafts import TextSession, offer_text_drafts
from edge_node.verdicts import verdict_fault
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
            AdaptiveK(settings.k_policy, settings.k, settings.k_max, pipelined=settings.pipelined),
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
        """Verify rounds over one stream to ``cloud`` until the request is done, the cloud is
        lost, or a revised plan moves the request.

        Pipelined, each round's send starts drafting the next round on the drafter thread while
        this loop awaits the verdict. The output stays the target's: the verifier's test is
        exact for any drafts drawn from the q rows sent with them, at the committed prefix, with
        randomness of their own. A round drafted ahead is sent only when the committed prefix is
        the one it was drafted after (every draft kept and the bonus token equal to the guess g),
        so its drafts are draws from q at that very prefix. g is the drafter's argmax: it draws
        nothing, and whether the round is used depends only on the cloud's own draw of the bonus
        token, which is independent of the drafts drawn after g. Dropped rounds never reach the
        verifier. Greedy, every committed token is the target's argmax either way.
        """
        s, acc = r.settings, r.acc
        sid = uuid.uuid4().hex
        call = stub.Speculate(timeout=s.round_timeout_s * (s.max_new + 2))
        p = r.params
        sampling = pb.Sampling(temperature=p.temperature, top_p=p.top_p, seed=p.seed)
        open_msg = pb.OpenSession(
            session_id=sid,
            prompt=r.committed,
            sampling=sampling,
            tokenizer=self.tokenizer_id,
        )
        offer_text_drafts(open_msg, self.tok, p.greedy)
        net_ewma: float | None = None
        flight: Flight | None = None  # the next round, being drafted while one is in flight
        ready: DraftResult | None = None  # a round drafted ahead that its verdict confirmed
        try:
            opened = await self._exchange(call, pb.SpecRequest(open=open_msg), s, acc)
            o = opened.opened  # a text-draft session counts positions in the cloud's tokens
            if o.session_id != sid or (o.position != len(r.committed) and not o.text_drafts):
                raise _CloudLost(f"bad session answer: {opened.WhichOneof('kind')}")
            k_cap = min(s.k_max, opened.opened.max_draft or s.k_max)
            if opened.opened.text_drafts and self.tok is not None:  # a cloud of another tokenizer
                exchange = partial(self._exchange, call, s=s, acc=acc)
                text = TextSession(self.lm, self.tok, self.compute, exchange)
                await text.run(r, sid, opened.opened.position, min(r.ctl.k, k_cap))
            if not r.params.greedy:
                k_cap = min(k_cap, max_draft_in_message(r.drafter.max_support))
            for rid in itertools.count(1):
                if self._done(r) or opened.opened.text_drafts:
                    break
                base = len(r.committed)
                draft, ready = await self._next_draft(r, k_cap, ready), None
                k = len(draft.proposal.tokens)  # fewer than asked when a stop ended the draft
                t_send = time.perf_counter()
                await self._send(call, proposal_to_wire(sid, rid, base, draft.proposal), s, acc)
                if r.settings.pipelined:  # a revised plan may turn it on or off
                    flight = self._draft_ahead(r, draft, k_cap)
                v = await self._verdict(call, s, acc, (sid, rid, base, k))
                round_ms = (time.perf_counter() - t_send) * 1e3
                if flight is not None:
                    flight.verdict(v.accepted, v.next_token)
                r.commit([*draft.proposal.tokens[: v.accepted].tolist(), v.next_token])
                guess = -1
                if flight is None:
                    r.drafter.rollback(base, k, v.accepted)
                else:
                    landing = await flight.land(r.drafter, v.accepted, v.next_token)
                    flight, ready, guess = None, landing.ready, landing.ahead.guess
                    self._count_ahead(acc, landing.ahead, landing.wasted)
                self._count_round(acc, k, v)
                guessed = v.accepted == k and guess >= 0  # the verdict tested the guess
                right = guessed and v.next_token == guess
                m = RoundMeasure(k, v.accepted, round_ms, draft.ms, v.model_ms, guessed, right)
                r.ctl.update(m)
                net_ewma = await self._observe(
                    r, cloud, rid, max(round_ms - v.model_ms, 0), net_ewma
                )
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
            await self._drop_ahead(r, flight, ready)

    async def _next_draft(self, r: _Req, k_cap: int, ready: DraftResult | None) -> DraftResult:
        """The next round: the one drafted ahead when its verdict confirmed it (cut to the k
        now in force), else fresh drafts after what is committed."""
        room = min(self.lm.max_len - 1 - len(r.committed), r.left())
        want = max(1, min(r.ctl.k, k_cap, room))
        if ready is not None:
            r.acc.pipelined_rounds += 1
            draft, dropped = cut(ready, want)
            r.acc.wasted_draft_tokens += dropped
            return draft
        propose = partial(r.drafter.propose, list(r.committed), want, r.settings.stops)
        draft = await self.compute(propose)
        r.acc.edge_model_s += draft.ms / 1e3
        return draft

    def _draft_ahead(self, r: _Req, draft: DraftResult, k_cap: int) -> Flight | None:
        """Start drafting the round after ``draft`` (in flight), or None when no round would
        follow a verdict that keeps every draft."""
        k = len(draft.proposal.tokens)
        after = len(r.committed) + k + 1  # committed length if every draft and g are kept
        room = min(self.lm.max_len - 1 - after, r.left() - (k + 1))
        if room < 1:
            return None
        want = max(1, min(r.ctl.k_if_full(), k_cap, room))
        tokens = draft.proposal.tokens.tolist()
        return Flight.start(self.compute, r.drafter, r.committed, tokens, want, r.settings.stops)

    @staticmethod
    async def _drop_ahead(r: _Req, flight: Flight | None, ready: DraftResult | None) -> None:
        """Leave the drafter's cache a prefix of what is committed when a session ends with
        work drafted ahead that no round will send."""
        if flight is not None:
            ahead = await flight.abandon(r.drafter)
            if ahead is not None:
                Speculator._count_ahead(r.acc, ahead, ahead.drafted)
        if ready is not None:
            r.acc.wasted_draft_tokens += len(ready.proposal.tokens)
            d = r.drafter.session
            d.truncate(min(d.length, len(r.committed)))

    @staticmethod
    def _count_ahead(acc: Account, ahead: Ahead, wasted: int) -> None:
        acc.edge_model_s += ahead.ms / 1e3
        acc.ahead_rounds += int(ahead.guess >= 0)
        acc.wasted_draft_tokens += wasted

    @staticmethod
    def _count_round(acc: Account, k: int, v: pb.VerifyReply) -> None:
        acc.ttft_s = acc.ttft_s or time.perf_counter() - acc.started
        acc.verify_rounds += 1
        acc.drafted_tokens += k
        acc.accepted_tokens += v.accepted
        acc.full_rounds += int(v.accepted == k)
        acc.cloud_model_cpu_s += v.model_cpu_s
        acc.k_history.append(k)

    async def _observe(
        self, r: _Req, cloud: str, rid: int, net: float, net_ewma: float | None
    ) -> float:
        """Report a round's network time; ask for a revised plan every few rounds and after
        an RTT jump. Returns the smoothed network time."""
        hooks = r.hooks
        if hooks.observe_rtt is not None:
            hooks.observe_rtt(cloud, net)
        jump = net_ewma is not None and net > hooks.rtt_jump * net_ewma + 1.0
        net_ewma = net if net_ewma is None else 0.7 * net_ewma + 0.3 * net
        if hooks.replan is not None and (jump or rid % hooks.replan_every == 0):
            await self._maybe_switch(r, cloud)
        return net_ewma

    async def _maybe_switch(self, r: _Req, cloud: str) -> None:
        assert r.hooks.replan is not None
        plan = await r.hooks.replan(r.left(), cloud)
        if plan is None:
            return
        if plan.mode == SPECULATION and plan.cloud[0] == cloud:
            if r.ctl.policy == KPolicy.FIXED:
                r.ctl.k = max(1, min(plan.k, r.ctl.k_max))
            if plan.pipelined != r.settings.pipelined:
                # Drafting ahead on or off from the next round: a round already drafted ahead
                # and confirmed is still sent, since it was drafted at the committed prefix.
                r.settings = replace(r.settings, pipelined=plan.pipelined)
                r.ctl.pipelined = plan.pipelined
                r.acc.plan_revisions += 1
                log_event(log, "plan_revised", mode=plan.mode, pipelined=plan.pipelined)
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
    async def _send(
        call: grpc.aio.StreamStreamCall, msg: pb.SpecRequest, s: SpecSettings, acc: Account
    ) -> None:
        acc.bytes_sent += msg.ByteSize()
        await asyncio.wait_for(call.write(msg), s.round_timeout_s)

    @staticmethod
    async def _receive(
        call: grpc.aio.StreamStreamCall, s: SpecSettings, acc: Account
    ) -> pb.SpecReply:
        reply = await asyncio.wait_for(call.read(), s.round_timeout_s)
        if reply is grpc.aio.EOF:
            raise _CloudLost("stream closed by the cloud")
        acc.bytes_received += reply.ByteSize()
        return reply

    async def _exchange(
        self, call: grpc.aio.StreamStreamCall, msg: pb.SpecRequest, s: SpecSettings, acc: Account
    ) -> pb.SpecReply:
        await self._send(call, msg, s, acc)
        return await self._receive(call, s, acc)

    async def _verdict(
        self,
        call: grpc.aio.StreamStreamCall,
        s: SpecSettings,
        acc: Account,
        expect: tuple[str, int, int, int],
    ) -> pb.VerifyReply:
        """The verdict of the round ``expect`` = (session id, round id, base, drafts), checked;
        a wrong one loses the cloud."""
        reply = await self._receive(call, s, acc)
        if not reply.HasField("verdict"):
            raise _CloudLost(f"expected a verdict, got {reply.WhichOneof('kind')}")
        fault = verdict_fault(reply.verdict, *expect, self.lm.vocab_size)
        if fault is not None:
            raise _CloudLost(f"bad verdict: {fault}")
        return reply.verdict

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
