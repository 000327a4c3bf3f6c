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
from tandem_wire.serving import log_event
from tandem_wire.v1 import tandem_pb2 as pb
from tandem_wire.v1 import tandem_pb2_grpc as pb_grpc

log = logging.getLogger("tandem.edge")
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
    started: float = field(default_factory=time.perf_counter, repr=False)


@dataclass
class SpecResult:
    """Generated tokens and how they were made."""

    tokens: list[int]
    account: Account
    degraded: bool = False
    cloud_node: str = ""
    note: str = ""


@dataclass(frozen=True)
class SpecSettings:
    """One speculation request's knobs."""

    max_new: int  # tokens to generate at the most
    eos_id: int | None  # stop after this token
    k: int = 4  # starting draft length
    k_policy: str = "heuristic"  # fixed, heuristic or rtt
    k_max: int = 16  # never draft more than this
    round_timeout_s: float = 10.0  # deadline of each verify round


CloudPicker = Callable[[Sequence[str]], Awaitable[tuple[str, pb_grpc.CloudStub] | None]]


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


class Speculator:
    """Runs speculation requests for one edge node over its drafter."""

    def __init__(self, lm: CausalLM, pool: ThreadPoolExecutor | None = None) -> None:
        self.lm = lm
        self.pool = pool or ThreadPoolExecutor(1, thread_name_prefix="drafter")

    async def _compute(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn)

    async def run(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        settings: SpecSettings,
        pick_cloud: CloudPicker,
    ) -> SpecResult:
        """Generate after ``prompt`` with the cloud verifying; never loses the request."""
        t0 = time.perf_counter()
        acc = Account()
        committed = list(prompt)
        drafter = Drafter(self.lm, params)
        ctl = AdaptiveK(settings.k_policy, settings.k, settings.k_max)
        tried: list[str] = []
        note, cloud_name = "", ""
        while not self._done(committed, len(prompt), settings):
            picked = await pick_cloud(tried)
            if picked is None:
                note = f"no cloud node available; {note}" if note else "no cloud node available"
                break
            cloud_name, stub = picked
            tried.append(cloud_name)
            try:
                await self._session(
                    stub, committed, len(prompt), params, settings, drafter, ctl, acc
                )
            except _CloudLost as exc:
                note = f"cloud {cloud_name} lost: {exc}"
                log_event(log, "cloud_lost", logging.WARNING, cloud=cloud_name, reason=str(exc))
                continue
        degraded = not self._done(committed, len(prompt), settings)
        if degraded:  # finish alone from what is committed
            await self._finish_alone(committed, len(prompt), params, settings, drafter, acc)
            log_event(log, "degraded_to_edge", logging.WARNING, reason=note)
        out = committed[len(prompt) :][: settings.max_new]
        if settings.eos_id in out:  # a round may have accepted tokens past the end
            out = out[: out.index(settings.eos_id) + 1]
        acc.generated_tokens = len(out)
        acc.wall_s = time.perf_counter() - t0
        acc.ttft_s = acc.ttft_s or acc.wall_s
        return SpecResult(out, acc, degraded, cloud_name if not degraded else "", note)

    def _done(self, committed: list[int], n_prompt: int, s: SpecSettings) -> bool:
        new = committed[n_prompt:]
        return (
            len(new) >= s.max_new
            or (s.eos_id is not None and s.eos_id in new)
            or len(committed) >= self.lm.max_len - 1
        )

    async def _session(
        self,
        stub: pb_grpc.CloudStub,
        committed: list[int],
        n_prompt: int,
        params: SamplingParams,
        s: SpecSettings,
        drafter: Drafter,
        ctl: AdaptiveK,
        acc: Account,
    ) -> None:
        sid = uuid.uuid4().hex
        call = stub.Speculate(timeout=s.round_timeout_s * (s.max_new + 2))
        sampling = pb.Sampling(temperature=params.temperature, top_p=params.top_p, seed=params.seed)
        try:
            opened = await self._exchange(
                call,
                pb.SpecRequest(
                    open=pb.OpenSession(session_id=sid, prompt=committed, sampling=sampling)
                ),
                s.round_timeout_s,
                acc,
            )
            k_cap = min(s.k_max, opened.opened.max_draft or s.k_max)
            for rid in itertools.count(1):
                if self._done(committed, n_prompt, s):
                    break
                base = len(committed)
                room = min(self.lm.max_len - 1 - base, s.max_new - (base - n_prompt))
                k = max(1, min(ctl.k, k_cap, room))
                draft: DraftResult = await self._compute(
                    partial(drafter.propose, list(committed), k)
                )
                acc.edge_model_s += draft.ms / 1e3
                t_send = time.perf_counter()
                reply = await self._exchange(
                    call, proposal_to_wire(sid, rid, base, draft.proposal), s.round_timeout_s, acc
                )
                v = reply.verdict
                if v.round_id != rid or v.base_position != base:
                    raise _CloudLost(f"verdict for round {v.round_id}, expected {rid}")
                round_ms = (time.perf_counter() - t_send) * 1e3
                committed.extend([*draft.proposal.tokens[: v.accepted].tolist(), v.next_token])
                drafter.rollback(base, k, v.accepted)
                if acc.ttft_s == 0.0:
                    acc.ttft_s = time.perf_counter() - acc.started
                acc.verify_rounds += 1
                acc.drafted_tokens += k
                acc.accepted_tokens += v.accepted
                acc.full_rounds += int(v.accepted == k)
                acc.cloud_model_cpu_s += v.model_cpu_s
                acc.k_history.append(k)
                ctl.update(RoundMeasure(k, v.accepted, round_ms, draft.ms, v.model_ms))
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

    @staticmethod
    async def _exchange(
        call: grpc.aio.StreamStreamCall, msg: pb.SpecRequest, timeout: float, acc: Account
    ) -> pb.SpecReply:
        acc.bytes_sent += msg.ByteSize()
        await asyncio.wait_for(call.write(msg), timeout)
        reply = await asyncio.wait_for(call.read(), timeout)
        if reply is grpc.aio.EOF:
            raise _CloudLost("stream closed by the cloud")
        acc.bytes_received += reply.ByteSize()
        return reply

    async def _finish_alone(
        self,
        committed: list[int],
        n_prompt: int,
        params: SamplingParams,
        s: SpecSettings,
        drafter: Drafter,
        acc: Account,
    ) -> None:
        def work() -> None:
            t0 = time.perf_counter()
            while not self._done(committed, n_prompt, s):
                sess = drafter.session
                if sess.length >= len(committed):
                    sess.truncate(len(committed) - 1)
                logits = sess.extend(committed[sess.length :])[-1]
                committed.append(sample(probs(logits, params), drafter.rng))
            acc.edge_model_s += time.perf_counter() - t0

        await self._compute(work)
