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
from edge_node.drafter import Drafter, DraftResult
from models.base import CausalLM
from models.sampling import SamplingParams, probs, sample
from models.speculative import Proposal
from node_runtime.serving import log_event
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("tandem.edge")
SPECULATION, CLOUD_ONLY = "speculation", "cloud-only"
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
    final_mode: str = SPECULATION  # the mode that produced the last tokens


@dataclass(frozen=True)
class SpecSettings:
    """One speculation request's knobs."""

    max_new: int  # tokens to generate at the most
    eos_id: int | None  # stop after this token
    k: int = 4  # starting draft length
    k_policy: str = "heuristic"  # fixed, heuristic or rtt
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

    mode: str  # speculation or cloud-only
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
    """Draft tokens and their sparse q as a VerifyRequest."""
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


class _CloudLost(Exception):
    pass


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

    def commit(self, tokens: list[int]) -> None:
        self.committed.extend(tokens)
        if self.hooks.on_tokens is not None:
            self.hooks.on_tokens(tokens)

    def left(self) -> int:
        return self.settings.max_new - (len(self.committed) - self.n_prompt)


class Speculator:
    """Runs speculation requests for one edge node over its drafter."""

    def __init__(self, lm: CausalLM, pool: ThreadPoolExecutor | None = None) -> None:
        self.lm = lm
        self.pool = pool or ThreadPoolExecutor(1, thread_name_prefix="drafter")

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
        start_mode: str = SPECULATION,
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
        out = r.committed[len(prompt) :][: settings.max_new]
        stops = [i for i, t in enumerate(out) if t in settings.stops]
        if stops:  # a round may have accepted tokens past the end
            out = out[: stops[0] + 1]
        acc = r.acc
        acc.generated_tokens = len(out)
        acc.wall_s = time.perf_counter() - t0
        acc.ttft_s = acc.ttft_s or acc.wall_s
        final = "edge-only" if degraded else mode
        return SpecResult(out, acc, degraded, "" if degraded else cloud_name, note, final)

    def _done(self, r: _Req) -> bool:
        new = r.committed[r.n_prompt :]
        eos = r.settings.eos_id
        return (
            r.left() <= 0
            or (eos is not None and eos in new)
            or (len(r.committed) >= self.lm.max_len - 1)
        )

    async def _session(self, r: _Req, cloud: str, stub: pb_grpc.CloudStub) -> None:
        s, acc, hooks = r.settings, r.acc, r.hooks
        sid = uuid.uuid4().hex
        call = stub.Speculate(timeout=s.round_timeout_s * (s.max_new + 2))
        p = r.params
        sampling = pb.Sampling(temperature=p.temperature, top_p=p.top_p, seed=p.seed)
        open_msg = pb.OpenSession(session_id=sid, prompt=r.committed, sampling=sampling)
        net_ewma: float | None = None
        try:
            opened = await self._exchange(call, pb.SpecRequest(open=open_msg), s, acc)
            k_cap = min(s.k_max, opened.opened.max_draft or s.k_max)
            for rid in itertools.count(1):
                if self._done(r):
                    break
                base = len(r.committed)
                room = min(self.lm.max_len - 1 - base, r.left())
                k = max(1, min(r.ctl.k, k_cap, room))
                propose = partial(r.drafter.propose, list(r.committed), k)
                draft: DraftResult = await self.compute(propose)
                acc.edge_model_s += draft.ms / 1e3
                t_send = time.perf_counter()
                msg = proposal_to_wire(sid, rid, base, draft.proposal)
                v = (await self._exchange(call, msg, s, acc)).verdict
                if v.round_id != rid or v.base_position != base:
                    raise _CloudLost(f"verdict for round {v.round_id}, expected {rid}")
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
            if r.ctl.policy == "fixed":
                r.ctl.k = max(1, min(plan.k, r.ctl.k_max))
            return
        raise _Switch(plan)

    async def _generate_rest(self, r: _Req, stub: pb_grpc.CloudStub) -> None:
        """Cloud-only from what is committed (a revised plan moved the request there)."""
        p = r.params
        req = pb.GenerateRequest(
            prompt=r.committed,
            max_new_tokens=r.left(),
            sampling=pb.Sampling(temperature=p.temperature, top_p=p.top_p, seed=p.seed),
        )
        r.acc.bytes_sent += req.ByteSize()
        try:
            reply = await stub.Generate(req, timeout=r.settings.round_timeout_s * 4)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in FAILOVER_CODES:
                raise _CloudLost(f"{exc.code().name}: {exc.details()}") from exc
            raise
        r.acc.bytes_received += reply.ByteSize()
        r.acc.cloud_model_cpu_s += reply.model_cpu_s
        r.acc.ttft_s = r.acc.ttft_s or time.perf_counter() - r.acc.started
        r.commit(list(reply.tokens))

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
            seq, out = list(r.committed), []
            sess = r.drafter.session
            while True:
                if sess.length >= len(seq):
                    sess.truncate(len(seq) - 1)
                logits = sess.extend(seq[sess.length :])[-1]
                tok = sample(probs(logits, r.params), r.drafter.rng)
                seq.append(tok)
                out.append(tok)
                stop = tok in r.settings.stops
                if len(out) >= r.left() or stop or len(seq) >= self.lm.max_len - 1:
                    break
            r.acc.edge_model_s += time.perf_counter() - t0
            return out

        if not self._done(r):
            r.commit(await self.compute(work))
